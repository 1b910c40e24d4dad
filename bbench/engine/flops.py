"""Training FLOP accounting with torch's FlopCounterMode (metrics.md, Cost).

Every region the Trainer runs on behalf of training (each step, and each method hook:
fit start, epoch start, epoch end) is accounted; the Trainer's own validation passes and
logging are not. Units: FLOPs = 2 × multiply-adds, backward included.

FlopCounterMode intercepts every operator in Python (about 5 ms per step of the mfeat MLP
with torch 2.14 on a 2-core CPU, several times the step itself), which would make counting
every step dominate a small run. In `sampled` mode the
first `flops_steps` steps of every pass over the training set are counted and the pass's
remaining steps are extrapolated by the number of samples they process; method hooks
(valuation passes, prototypes, re-initialisation) are always counted in full. `all`
counts every step (tests compare the two).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch.utils.flop_counter import FlopCounterMode


class FlopAccount:
    """Sums the FLOPs of every counted region of a run; resumable through `total`."""

    def __init__(self, enabled: bool = True, total: int = 0) -> None:
        self.enabled = enabled
        self.total = int(total)
        self.regions: dict[str, int] = {}
        self.estimated = 0  # FLOPs extrapolated rather than counted (sampled mode)
        self.last = 0  # FLOPs of the most recent counted region

    def add_estimate(self, region: str, flops: float) -> None:
        self.total += int(round(flops))
        self.estimated += int(round(flops))
        self.regions[region] = self.regions.get(region, 0) + int(round(flops))

    @contextlib.contextmanager
    def count(self, region: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        flops = int(counter.get_total_flops())
        self.total += flops
        self.regions[region] = self.regions.get(region, 0) + flops
        self.last = flops


def count_forward_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call of `fn` (e.g. one encoder's forward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
