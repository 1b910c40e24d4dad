"""Median device time of a call, after warm-up, with untimed set-up between calls.

Why one timer for everything the GPU script measures: a kernel takes tens of microseconds and a
training step tens of milliseconds, on CUDA in the real run and on the CPU in the dry run, and
every figure must be read only once the device has finished the work. On CUDA the device is
synchronised after the set-up (so work it queued is not charged to the call, and the call's own
launch gaps are), then CUDA events recorded on the stream around the call give its device time;
on the CPU the wall clock does. The median of several repeats resists the odd slow repeat.

A bandwidth needs the kernels' own time, without the host's work of launching them (a
`grad_scale_` call over 122 tensors spends tens of microseconds on the host, as long as its
kernel runs on an H200). `queued=True` puts a device-side wait (`torch.cuda._sleep`) in the
stream before the start event: the host launches the call while the device waits, and the
events then time the kernels alone (if the launches take longer than the wait, the excess
counts, so the figure can only err low).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    """The seconds of every timed repeat of one call."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    def as_dict(self) -> dict[str, float | int]:
        """The figures a summary stores: median, min and max in milliseconds, and the repeats."""
        return {"median_ms": self.median * 1e3, "min_ms": self.min * 1e3, "max_ms": self.max * 1e3,
                "repeats": len(self.seconds)}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


LAUNCH_COVER_CYCLES = 10_000_000
"""The device-side wait of a `queued` timing: about 5 ms at a data-centre GPU's 2 GHz, several
times the host work of the slowest call timed this way, the per-parameter loop's 122 launches
over the ResNet18-AV gradient list (0.5-1 ms: an estimate, not measured on a GPU here)."""


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
               setup: Callable[[], object] | None = None, queued: bool = False) -> Timing:
    """`warmup` untimed calls, then `repeats` timed ones; `setup` runs untimed before each call.
    `queued`: on CUDA, the device time of the call's kernels without its launch work (above)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_calls: need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    seconds = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if queued:
                torch.cuda._sleep(LAUNCH_COVER_CYCLES)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
    return Timing(tuple(seconds))
