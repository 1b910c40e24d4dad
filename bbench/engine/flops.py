"""Training FLOP accounting with torch's FlopCounterMode (metrics.md, Cost).

Every region the Trainer runs on behalf of training (each step, and each method hook:
fit start, epoch start, epoch end) is accounted; the Trainer's own validation passes and
logging are not. Units: FLOPs = 2 × multiply-adds, backward included.

FlopCounterMode intercepts every operator in Python (about 5 ms per step of the mfeat MLP
with torch 2.14 on a 2-core CPU, several times the step itself), so counting every step
would dominate a small run. A training step's FLOPs are a function of what it computes,
not of the values it computes on: in `signature` mode (the default) the first step of each
distinct step signature (phase, the batch's tensor shapes, whether the window is open, the
method's own branch, `Method.step_branch`) is counted and its count reused for every later
step with that signature, which gives exactly the total of `all` (counting every step; tests
compare the two for every method). Method hooks (valuation passes, prototypes,
re-initialisation) are always counted in full.
"""
from __future__ import annotations

import contextlib
from typing import Hashable, Iterator

from torch.utils.flop_counter import FlopCounterMode


_NOT_COUNTED = contextlib.nullcontext()


class FlopAccount:
    """Sums the FLOPs of every counted region of a run; resumable through `total`."""

    def __init__(self, enabled: bool = True, total: int = 0) -> None:
        self.enabled = enabled
        self.total = int(total)
        self.regions: dict[str, int] = {}
        self.reused = 0  # FLOPs of steps taken from an earlier step of the same signature
        self.by_signature: dict[Hashable, int] = {}
        self.last = 0  # FLOPs of the most recent counted region

    @contextlib.contextmanager
    def count(self, region: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        self.last = int(counter.get_total_flops())
        self._add(region, self.last)

    def skip(self, region: str) -> contextlib.AbstractContextManager:
        """A region known to run no code (a hook a method does not override): 0 FLOPs,
        recorded without entering a counter."""
        if self.enabled:
            self._add(region, 0)
        return _NOT_COUNTED

    def count_step(self, signature: Hashable | None) -> contextlib.AbstractContextManager:
        """A training step: counted the first time its signature is seen, then reused
        (`signature` None: always counted, as in `all` mode). A reused count is added when
        the step starts, and the step runs in no counting context at all."""
        if not self.enabled:
            return _NOT_COUNTED
        if signature is not None and signature in self.by_signature:
            flops = self.by_signature[signature]
            self._add("step", flops)
            self.reused += flops
            return _NOT_COUNTED
        return self._count_first(signature)

    @contextlib.contextmanager
    def _count_first(self, signature: Hashable | None) -> Iterator[None]:
        with self.count("step"):
            yield
        if signature is not None:
            self.by_signature[signature] = self.last

    def _add(self, region: str, flops: int) -> None:
        self.total += flops
        self.regions[region] = self.regions.get(region, 0) + flops


def count_forward_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call of `fn` (e.g. one encoder's forward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
