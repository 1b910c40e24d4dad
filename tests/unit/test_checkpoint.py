"""Checkpoint files (engine/checkpoint.py): exact round trips, atomic writes, and torch's
save settings left as they were."""
from __future__ import annotations

import threading
import zipfile

import pytest
import torch
from torch.utils.serialization import config

from bbench.engine import checkpoint as ckpt

CPU = torch.device("cpu")


def a_state() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"run": {"hash": "x"}, "epoch": 3, "global_step": 12, "history": [{"epoch": 0}],
            "model": {"w": torch.randn(5, 4, generator=generator)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.randn(5, 4, generator=generator)}}},
            "scheduler": {"last_epoch": 3}, "precision": {}, "method": {"extra": {}},
            "rng": ckpt.rng_state(), "best_state": {"w": torch.zeros(5, 4)}}


def test_a_checkpoint_reads_back_exactly(tmp_path):
    state = a_state()
    ckpt.save(tmp_path / ckpt.CHECKPOINT_NAME, state)
    back = ckpt.load(tmp_path, CPU)
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"],
                       state["optimizer"]["state"][0]["momentum_buffer"])
    assert {k: back[k] for k in ("epoch", "global_step", "history", "run")} == {
        k: state[k] for k in ("epoch", "global_step", "history", "run")}


def test_records_are_written_without_crc32_and_torchs_setting_is_restored(tmp_path):
    assert config.save.compute_crc32 is True
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save(path, a_state())
    assert {info.CRC for info in zipfile.ZipFile(path).infolist()} == {0}
    assert config.save.compute_crc32 is True  # the user's own torch.save calls are unchanged
    torch.save({"w": torch.ones(3)}, tmp_path / "mine.pt")
    assert 0 not in {info.CRC for info in zipfile.ZipFile(tmp_path / "mine.pt").infolist()}


def test_a_failed_save_keeps_the_previous_checkpoint_and_restores_the_setting(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save(path, a_state())
    before = path.read_bytes()
    with pytest.raises(Exception):
        ckpt.save(path, {**a_state(), "model": {"w": lambda: None}})  # cannot be pickled
    assert path.read_bytes() == before and not path.with_name(path.name + ".tmp").exists()
    assert config.save.compute_crc32 is True


def test_saves_on_two_threads_switch_the_setting_one_at_a_time(tmp_path):
    """A save on the run's writer thread can meet one on the main thread. Unserialised, the
    later one would record the earlier one's switched-off setting as the user's and leave it
    off. With the switch held by one save, the other waits and both restore it."""
    holding, release, second_done = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with ckpt._without_crc32():
            holding.set()
            release.wait(timeout=30)

    def second() -> None:
        ckpt.save(tmp_path / "second.pt", a_state())
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert holding.wait(timeout=30)
    threads[1].start()
    assert not second_done.wait(timeout=0.3)  # it waits for the first to hand the switch back
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert second_done.is_set() and config.save.compute_crc32 is True
    assert {info.CRC for info in zipfile.ZipFile(tmp_path / "second.pt").infolist()} == {0}


def test_a_truncated_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save(path, a_state())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load(tmp_path, CPU)


def test_only_a_finished_fits_checkpoint_may_leave_out_the_training_state(tmp_path):
    """After the last epoch nothing is trained from the checkpoint again (trainer.py), so it
    holds no final weights or optimizer state; any other checkpoint without them is refused."""
    without = {k: v for k, v in a_state().items() if k not in ckpt.TRAINING_KEYS}
    ckpt.save(tmp_path / ckpt.CHECKPOINT_NAME, {**without, "finished": True})
    assert ckpt.load(tmp_path, CPU)["finished"]
    ckpt.save(tmp_path / ckpt.CHECKPOINT_NAME, {**without, "finished": False})
    with pytest.raises(ckpt.CheckpointError, match="missing model, optimizer, scheduler, precision"):
        ckpt.load(tmp_path, CPU)


def test_the_cuda_generators_are_kept_only_once_cuda_is_in_use(monkeypatch):
    """Reading CUDA's generator states starts CUDA: a CPU run on a machine with a GPU would
    take a CUDA context (and the time to make it) at its first checkpoint, for state it
    never used. A run that used CUDA has started it, so its generators are kept."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("CUDA was started"))
    assert set(ckpt.rng_state()) == {"torch", "python", "numpy"}
    kept = [torch.zeros(4, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: kept)
    assert ckpt.rng_state()["cuda"] is kept
