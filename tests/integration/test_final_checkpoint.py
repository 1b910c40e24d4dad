"""The checkpoint after a fit's last epoch is written on the run's writer thread, while the
test split is evaluated (runner.py, Trainer `writer`): the fit's time leaves it out, the
record waits for it, and a failed write loses nothing."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import bbench
import bbench.runner
from bbench.engine import checkpoint as ckpt
from bbench.results import RECORD_NAME
from bbench.results.files import OutputWriteError

EVERY_EPOCH = {"train.checkpoint_seconds": 0}


def test_the_last_checkpoint_is_written_while_the_test_split_is_evaluated(small_run, monkeypatch):
    """The finished checkpoint's save cannot end before test evaluation has begun: it waits
    for it. Were it written inside the fit, as before, it would wait out its timeout and the
    run would record that."""
    testing = threading.Event()
    seen: dict[str, Any] = {}
    save, evaluate = ckpt.save, bbench.runner.evaluate_on_test

    def save_once_testing(path: Path, state: dict[str, Any]) -> None:
        if state["finished"]:
            seen["thread"] = threading.current_thread().name
            seen["overlapped"] = testing.wait(timeout=10)
            seen["epoch"] = state["epoch"]
        save(path, state)

    def evaluate_marked(*args: Any, **kwargs: Any) -> Any:
        testing.set()
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save", save_once_testing)
    monkeypatch.setattr(bbench.runner, "evaluate_on_test", evaluate_marked)
    result = small_run("OGM", epochs=2, **EVERY_EPOCH)
    assert seen == {"thread": seen["thread"], "overlapped": True, "epoch": 2}
    assert seen["thread"].startswith("bbench-write")
    assert result.metrics["final_checkpoint_seconds"] > 0
    assert (result.run_dir / RECORD_NAME).is_file()


def test_a_finished_run_keeps_its_selected_weights_once(small_run):
    """The last checkpoint is removed once the record is written: the selected weights are
    in best_model.pt, the rest in the record, and a finished run is not resumed."""
    result = small_run("Baseline", epochs=2, **EVERY_EPOCH)
    assert sorted(p.name for p in result.run_dir.iterdir()) == [
        ".lock", "best_model.pt", "record.json", "spec.json"] + (
        ["tensorboard"] if (result.run_dir / "tensorboard").exists() else [])
    with pytest.raises(bbench.runner.RunDirectoryExistsError, match="finished run"):
        bbench.run(resume=result.run_dir)


def test_the_record_is_written_only_after_the_last_checkpoint(small_run, monkeypatch):
    saved: list[bool] = []
    save = ckpt.save

    def save_noted(path: Path, state: dict[str, Any]) -> None:
        save(path, state)
        saved.append(bool(state["finished"]))

    def record_after_save(result: bbench.RunResult) -> None:
        assert saved[-1], "the record was written before the last checkpoint"
        record_save(result)

    record_save = bbench.RunResult.save
    monkeypatch.setattr(ckpt, "save", save_noted)
    monkeypatch.setattr(bbench.RunResult, "save", record_after_save)
    result = small_run("Baseline", epochs=2, **EVERY_EPOCH)
    assert saved == [False, True]
    assert not (result.run_dir / ckpt.CHECKPOINT_NAME).exists()  # removed after the record


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_at_the_last_checkpoint_stops_the_run_and_names_the_one_to_resume_from(
        small_run, tmp_path, monkeypatch):
    """A real ENOSPC: the last checkpoint's temporary file is a link to /dev/full. torch's own
    file writer would report it as "basic_ios::clear: iostream error"; the message says what
    the disk says, and which earlier checkpoint the run continues from."""
    full = small_run("OGM", epochs=2, **EVERY_EPOCH)
    save = ckpt.save

    def disk_full_at_the_end(path: Path, state: dict[str, Any]) -> None:
        if state["finished"]:
            path.with_name(path.name + ".tmp").symlink_to("/dev/full")
        save(path, state)

    monkeypatch.setattr(ckpt, "save", disk_full_at_the_end)
    cut = tmp_path / "cut"
    with pytest.raises(OutputWriteError,
                       match=r"could not write the checkpoint .*No space left on device.*"
                             r"The checkpoint of epoch 1 is usable.*--resume .*cut"):
        small_run("OGM", epochs=2, out=str(cut), **EVERY_EPOCH)
    assert not (cut / RECORD_NAME).exists()
    assert not (cut / "checkpoint.pt.tmp").exists()
    assert ckpt.load(cut, torch.device("cpu"))["epoch"] == 1  # the earlier one, intact
    monkeypatch.setattr(ckpt, "save", save)
    resumed = bbench.run(resume=cut)
    assert resumed.metrics["acc"] == full.metrics["acc"]
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_message_for_every_file_torch_writes(tmp_path):
    (tmp_path / "best_model.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(OutputWriteError, match=r"could not write the selected weights "
                                               r".*best_model\.pt: No space left on device"):
        ckpt.save_file(tmp_path / "best_model.pt", {"w": torch.ones(1000)}, "selected weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_interrupt_after_the_last_epoch_counts_the_checkpoint_still_being_written(
        small_run, tmp_path):
    """Ctrl-C right after the last epoch (here: in an epoch callback) meets the last
    checkpoint's write in flight: the message counts it once it has landed, so the run
    resumes from it instead of being called lost. With the default 60 s between
    checkpoints, it is the run's only one."""
    def stop_after_the_last(trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(bbench.runner.RunInterrupted) as stop:
        small_run("Baseline", epochs=2, out=str(tmp_path / "cut"), callbacks=[stop_after_the_last])
    assert (stop.value.epochs_done, stop.value.checkpointed) == (2, 2)
    assert "its checkpoint holds the first 2" in stop.value.message()
    assert ckpt.load(tmp_path / "cut", torch.device("cpu"))["finished"]
