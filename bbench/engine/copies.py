"""Train a model, or a part of one, apart from the run's own loop, and keep its best epoch.

Procedures that need a separately trained module share this instead of hand-rolling a
loop: LinearProbe trains a linear head per modality on cached features; GBlending trains
copies of the model to estimate each modality's generalisation. The caller says what a
step's loss is and how an epoch is scored (on validation data: the test split never
steers a choice); the module ends with the weights of its best-scoring epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from bbench.config.specs import OptimizerSpec
from bbench.engine.optim import build_optimizer
from bbench.models.modes import eval_mode


@dataclass
class FittedCopy:
    best_epoch: int
    best_score: float
    scores: list[float]


def fit_copy(module: nn.Module, batches: Callable[[int], Iterable[Any]],
             step_loss: Callable[[nn.Module, Any], torch.Tensor], score: Callable[[nn.Module], float],
             epochs: int, optimizer: OptimizerSpec) -> FittedCopy:
    """Train `module` in place for `epochs` epochs on `batches(epoch)` with `optimizer`.

    After each epoch `score(module)` (in eval mode, without gradients) rates it; the module
    ends with the weights of the first epoch of the highest score, in the mode it came in.
    """
    was_training = module.training
    opt = build_optimizer(optimizer, module.parameters())
    best_state: dict[str, torch.Tensor] = {}
    best_epoch, best_score, scores = -1, -float("inf"), []
    for epoch in range(epochs):
        module.train()
        for batch in batches(epoch):
            opt.zero_grad(set_to_none=True)
            step_loss(module, batch).backward()
            opt.step()
        with eval_mode(module), torch.no_grad():
            value = float(score(module))
        scores.append(value)
        if value > best_score:
            best_epoch, best_score = epoch, value
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(best_state)
    module.train(was_training)
    return FittedCopy(best_epoch, best_score, scores)
