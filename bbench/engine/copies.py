"""Train a model, or a part of one, apart from the run's own loop, and keep its best epoch.

Procedures that need a separately trained module share this instead of hand-rolling a
loop: LinearProbe trains a linear head per modality on cached features; GBlending trains
copies of the model to estimate each head's generalisation and overfitting. The caller
says what a step's loss is and how an epoch is scored (on validation data: the test split
never steers a choice); the module ends with the weights of its best-scoring epoch, or,
for a copy that is only measured (`keep_best=False`), with those of its last epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable

import torch
from torch import nn

from bbench.config.specs import OptimizerSpec
from bbench.engine.optim import build_optimizer
from bbench.models.modes import eval_mode


@dataclass
class FittedCopy:
    """What a copy's training measured.

    `scores[i]` is the score after epoch `scored_epochs[i]`; `train_losses[j]` (when the
    caller said how many samples a batch holds) is epoch j's sample-weighted mean training
    loss, NaN for an epoch without a batch.
    """

    best_epoch: int
    best_score: float
    scores: list[float]
    scored_epochs: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)


def fit_copy(module: nn.Module, batches: Callable[[int], Iterable[Any]],
             step_loss: Callable[[nn.Module, Any], torch.Tensor], score: Callable[[nn.Module], float],
             epochs: int, optimizer: OptimizerSpec, *,
             samples: Callable[[Any], int] | None = None,
             score_epochs: Collection[int] | None = None,
             keep_best: bool = True) -> FittedCopy:
    """Train `module` in place for `epochs` epochs on `batches(epoch)` with `optimizer`.

    After each epoch in `score_epochs` (default: every epoch) `score(module)` (in eval mode,
    without gradients) rates it. With `keep_best` the module ends with the weights of the
    first scored epoch of the highest score, else with its last epoch's weights (no state is
    copied); either way in the mode it came in. With `samples` (the number of samples of a
    batch) each epoch's mean training loss is recorded, weighted by batch size: a sum over
    batches would grow with the number of batches, so losses of loaders of different sizes
    could not be compared. The sums stay on the device and are read once per epoch.
    """
    scored = range(epochs) if score_epochs is None else score_epochs
    if keep_best and not any(e in scored for e in range(epochs)):
        raise ValueError(f"fit_copy: keep_best needs a scored epoch among the {epochs} epochs, "
                         f"got score_epochs={sorted(scored)}")
    was_training = module.training
    opt = build_optimizer(optimizer, module.parameters())
    best_state: dict[str, torch.Tensor] = {}
    result = FittedCopy(-1, -float("inf"), [])
    for epoch in range(epochs):
        module.train()
        loss_sum: torch.Tensor | float = 0.0
        count = 0
        for batch in batches(epoch):
            opt.zero_grad(set_to_none=True)
            loss = step_loss(module, batch)
            loss.backward()
            opt.step()
            if samples is not None:
                n = int(samples(batch))
                loss_sum = loss_sum + loss.detach().double() * n
                count += n
        if samples is not None:
            result.train_losses.append(float(loss_sum) / count if count else math.nan)
        if epoch not in scored:
            continue
        with eval_mode(module), torch.no_grad():
            value = float(score(module))
        result.scores.append(value)
        result.scored_epochs.append(epoch)
        if value > result.best_score:
            result.best_epoch, result.best_score = epoch, value
            if keep_best:
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if keep_best:
        module.load_state_dict(best_state)
    module.train(was_training)
    return result
