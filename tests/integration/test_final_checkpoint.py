"""The checkpoint after a fit's last epoch is written on the run's writer thread, while the
test split is evaluated (runner.py, Trainer `writer`): the fit's time leaves it out, the
record waits for it, and a failed write loses nothing."""
from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import bbench
import bbench.runner
from bbench.engine import checkpoint as ckpt
from bbench.results import RECORD_NAME
from bbench.results.files import OutputWriteError, atomic_write

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


def test_a_failed_last_checkpoint_stops_the_run_and_names_the_checkpoint_to_resume_from(
        small_run, tmp_path, monkeypatch):
    full = small_run("OGM", epochs=2, **EVERY_EPOCH)
    save = ckpt.save

    def disk_full_at_the_end(path: Path, state: dict[str, Any]) -> None:
        if not state["finished"]:
            return save(path, state)

        def full_disk(tmp: Path) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write(path, full_disk, "checkpoint")

    monkeypatch.setattr(ckpt, "save", disk_full_at_the_end)
    cut = tmp_path / "cut"
    with pytest.raises(OutputWriteError,
                       match=r"No space left on device.*The checkpoint of epoch 1 is usable.*"
                             r"--resume .*cut") as failure:
        small_run("OGM", epochs=2, out=str(cut), **EVERY_EPOCH)
    assert "checkpoint" in str(failure.value).split(":")[0]
    assert not (cut / RECORD_NAME).exists()
    assert ckpt.load(cut, torch.device("cpu"))["epoch"] == 1  # the earlier one, intact
    monkeypatch.setattr(ckpt, "save", save)
    resumed = bbench.run(resume=cut)
    assert resumed.metrics["acc"] == full.metrics["acc"]
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
