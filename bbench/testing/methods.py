"""Helpers for testing a method's step in isolation (docs/adding-a-method.md).

`one_step` runs one `train_step` of a registered method from a fixed initialisation on a
given batch and leaves the gradients in `.grad`, so a test can compare what two methods
wrote (e.g. "plain OGM with alpha = 0 equals Baseline bit for bit").
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import DataInfo, TensorMultimodalDataset
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext, StepOutput
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method


class BNEncoder(nn.Module):
    """Linear → BatchNorm1d → ReLU: a toy encoder with buffers (running statistics), for
    tests that a step leaves some encoder's parameters *and* buffers untouched."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def toy_info(dims: tuple[int, ...] = (5, 3), num_classes: int = 4,
             names: tuple[str, ...] = ("a", "b")) -> DataInfo:
    return DataInfo("toy", names, num_classes, {n: (d,) for n, d in zip(names, dims)},
                    {n: torch.float32 for n in names})


def toy_batch(info: DataInfo, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(n, *info.input_shapes[m], generator=g) for m in info.modalities}
    batch["label"] = torch.randint(0, info.num_classes, (n,), generator=g)
    batch["index"] = torch.arange(n)
    return batch


def one_step(method_name: str, params: dict[str, Any], info: DataInfo, batch: dict[str, torch.Tensor],
             epoch: int = 0, init_seed: int = 0, lr: float = 0.1) -> tuple[Trainer, StepOutput]:
    """One train_step of a method from a fixed initialisation; returns (trainer, step output).

    Gradients stay in `.grad` after the step, so callers can compare what each method wrote.
    The method's epoch start runs first (a replacement training set it returns is not used:
    the step is on `batch`).
    """
    ctx = RunContext(info, ModelSpec(), 0, torch.device("cpu"))
    method = build_method(method_name, params, ctx)
    torch.manual_seed(init_seed)
    model = method.build_model()
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    spec = TrainSpec(optimizer=OptimizerSpec(lr=lr), epochs=1, progress=False)
    trainer = Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False)
    method.on_epoch_start(trainer, epoch)  # as the Trainer does before an epoch's first step
    out = method.train_step(trainer, batch, StepInfo(epoch, 0, 1, 0, active=method.active(epoch)))
    return trainer, out


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
