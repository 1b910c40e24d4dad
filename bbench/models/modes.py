"""`eval_mode(model)`: evaluate without training-only behaviour, then restore the mode.

Evaluation (validation, test metrics, Shapley passes, valuation, FLOP probes) must run in
eval mode (no dropout, batch-norm statistics frozen) and leave a model that was training
still training, even when the evaluation raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
