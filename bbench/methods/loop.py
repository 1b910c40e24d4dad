"""What a method sees of the training loop: a narrow protocol, not the concrete Trainer.

Methods are written against `TrainingLoop`; `bbench.engine.trainer.Trainer` implements it.
The protocol holds what a hook may use (the model, the device, the train and validation
splits, loaders, gradient zeroing, the NaN check, the precision's autocast region and
backward passes, the one optimizer step) and nothing
else, so a method cannot reach the test split, the checkpoint files or the scheduler, and
no method imports the Trainer (methods may use the engine's helpers, which import no method:
no import cycle).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bbench.data.base import Batch, DataInfo, collate_samples


@dataclass(frozen=True)
class StepInfo:
    """Where a training step sits: epoch e, batch j of n_b in this pass, global step t.

    `active` says whether a windowed method's window is open in this epoch (always True for
    a method without a window); hooks that run on every step read it.
    """

    epoch: int
    batch_index: int
    num_batches: int
    global_step: int
    phase: int = 0
    active: bool = True


@dataclass
class TrainingData:
    """The splits the loop and the methods may see: train and validation, never test."""

    info: DataInfo
    train: Dataset
    val: Dataset
    collate: Callable = collate_samples
    train_eval: Dataset | None = None  # the train split with evaluation transforms

    @property
    def train_for_eval(self) -> Dataset:
        return self.train_eval if self.train_eval is not None else self.train


class TrainingLoop(Protocol):
    """The loop as a method's hooks see it."""

    model: nn.Module
    device: torch.device
    data: TrainingData
    epoch: int
    global_step: int

    def zero_grad(self) -> None:
        """Zero every gradient with set_to_none=True (methods.md §1.4)."""

    def check_finite(self, loss: torch.Tensor, step: StepInfo) -> None:
        """Stop training with the epoch and step when the loss is NaN or infinite."""

    def optimizer_step(self) -> None:
        """The one optimizer update of a step (skipped by fp16 loss scaling on overflow)."""

    def autocast(self) -> AbstractContextManager:
        """The low-precision region (`train.precision`) of a step's forward and loss."""

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """`loss.backward(**kwargs)`, the gradients of the optimizer's parameters unscaled."""

    def grads(self, loss: torch.Tensor, inputs: list[torch.Tensor],
              **kwargs: Any) -> tuple[torch.Tensor | None, ...]:
        """`torch.autograd.grad(loss, inputs, **kwargs)`, unscaled."""

    def train_loader(self, dataset: Dataset, epoch: int, phase: int = 0, shuffle: bool = True,
                     drop_last: bool = True) -> DataLoader:
        """A seeded training loader: the order is a function of (run seed, epoch, phase)."""

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """An in-order loader over every sample."""

    def to_device(self, batch: Batch) -> Batch:
        """The batch on the loop's device."""
