"""A run stopped by Ctrl-C after a given epoch and resumed: for "resume is exact" tests.

Every stateful method needs the same test (a resumed run ends exactly as an uninterrupted
one); this is the interrupted half of it, written once.
"""
from __future__ import annotations

from typing import Any

from bbench.results.record import RunResult
from bbench.runner import RunInterrupted, run


def interrupted_and_resumed(method: str, dataset: str, after_epoch: int,
                            **overrides: Any) -> RunResult:
    """Train `method` on `dataset`, interrupt it right after epoch `after_epoch` (its checkpoint
    written: checkpoints after every epoch, whatever `train.checkpoint_seconds` would allow),
    then `--resume` it to the end and return the resumed run's result."""
    overrides = {"train.checkpoint_seconds": 0, **overrides}

    def interrupt(trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        if epoch == after_epoch:
            raise KeyboardInterrupt

    try:
        run(method, dataset, callbacks=[interrupt], **overrides)
    except RunInterrupted as stop:
        if stop.checkpointed != after_epoch + 1:
            raise AssertionError(f"the checkpoint holds {stop.checkpointed} epochs, expected "
                                 f"{after_epoch + 1}") from None
        return run(resume=stop.run_dir)
    raise AssertionError(f"{method} finished before epoch {after_epoch} ended")
