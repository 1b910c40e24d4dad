"""Modes of computation: `eval_mode(model)` and `float32_region(device)`.

Evaluation (validation, test metrics, Shapley passes, valuation, FLOP probes) must run in
eval mode (no dropout, batch-norm statistics frozen) and leave a model that was training
still training, even when the evaluation raises. Method math inside a mixed-precision
forward (scores, cosines) must run in float32.
"""
from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off: method math inside a low-precision forward (`train.precision`)
    that must run in float32 (its inputs then need `.float()`); a no-op where no autocast is
    active (entering an autocast context costs more than a small step's bookkeeping)."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
