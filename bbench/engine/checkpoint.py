"""Checkpoint files: atomic writes and the random-number state a resumed run needs."""
from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from bbench.results.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not belong to the run that would continue from it."""


REQUIRED_KEYS = ("epoch", "global_step", "method", "rng", "history", "run", "best_state")
TRAINING_KEYS = ("model", "optimizer", "scheduler", "precision")
"""What a checkpoint written before the last epoch also holds: the state the next epochs train
from, each the `state_dict` of the Trainer's attribute of that name. A finished fit's checkpoint (`finished`: written after the last epoch, for a run stopped
between its fit and its record) leaves them out: only the selected weights, the history and
the counts are read from it again, and the final weights and the optimizer's state are two
thirds of a ResNet18-AV checkpoint (180 of 268 MB, 171 of 256 MiB)."""


def save(path: Path, state: dict[str, Any]) -> None:
    """Atomic: an interrupted or failed save (Ctrl-C, full disk) leaves the last one intact."""
    with _without_crc32():
        save_file(path, state, "checkpoint")


def save_file(path: Path, obj: Any, what: str) -> None:
    """`torch.save(obj)` to `path`, atomically, through a Python file object.

    Why the file object: given a path, torch writes with its own C++ stream and reports a
    failed write (a full disk, a quota) as a RuntimeError without the reason
    ("basic_ios::clear: iostream error"), which `atomic_write` cannot tell from a bug;
    through a file object the failure is the OSError that names it (ENOSPC), and
    `atomic_write` makes it one message naming the file. The time is the same (an 84 MiB
    state: 0.03-0.06 s either way on a 2-core VM)."""
    atomic_write(path, lambda tmp: torch_save(obj, tmp), what)


def torch_save(obj: Any, path: Path) -> None:
    """`torch.save` through a Python file object, so a failed write is an OSError (`save_file`)."""
    with open(path, "wb") as file:
        torch.save(obj, file)


def timed_save(path: Path, state: dict[str, Any]) -> float:
    """`save`, returning its seconds: the time a save on another thread took, for the record."""
    started = time.perf_counter()
    save(path, state)
    return time.perf_counter() - started


_CRC_SWITCH = threading.Lock()
"""Held while torch's process-wide CRC setting is switched off (`_without_crc32`)."""


@contextlib.contextmanager
def _without_crc32() -> Iterator[None]:
    """`torch.save` without the CRC32 of each zip record, where torch lets it be skipped
    (`torch.utils.serialization.config.save.compute_crc32`, torch 2.6 and later).

    Why: `torch.load` never checks it (a checkpoint with a flipped byte loads silently
    either way), and computing it is half the time of a save: a ResNet18-AV checkpoint
    (268 MB: weights, momentum, the selected weights) takes 0.40 s with it and 0.21 s
    without on a 2-core CPU. A truncated file is still refused (its zip directory is
    missing: `load`). The setting is torch's, process-wide, so it is restored at once, and
    one save at a time switches it. Defensive: the run saves checkpoints on one thread at a
    time today (the writer thread only after the fit), but two overlapping saves would
    otherwise leave the setting off, the later one restoring the earlier one's switch."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # an older torch: nothing to switch
        yield
        return
    if not hasattr(config.save, "compute_crc32"):
        yield
        return
    with _CRC_SWITCH:
        before = config.save.compute_crc32
        config.save.compute_crc32 = False
        try:
            yield
        finally:
            config.save.compute_crc32 = before


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint's state, or one clear error saying why it cannot be used."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from: expected {path} (a run writes it "
                              f"after an epoch once train.checkpoint_seconds of training have "
                              f"passed since the last, after its last epoch, and never with "
                              f"train.checkpoint_every = 0)")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # zip, pickle and EOF errors all mean the same to the user
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} cannot be read as a bbench checkpoint ({size} bytes; {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}): it is truncated, empty or "
            f"not a checkpoint. The run cannot continue from it; start the run again") from None
    if not isinstance(state, dict):
        state = {}
    required = REQUIRED_KEYS + (() if state.get("finished") else TRAINING_KEYS)
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this bbench version (missing "
                              f"{', '.join(missing)}); start the run again")
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_initialized():  # a run that never used CUDA has no CUDA state to keep,
        state["cuda"] = torch.cuda.get_rng_state_all()  # and reading it would start CUDA
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed every global generator; method randomness uses its own generator (§1.7)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
