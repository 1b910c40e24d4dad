"""Optimizer and learning-rate schedule of a run, from its typed spec."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from bbench.config.specs import OptimizerSpec, SchedulerSpec


def build_optimizer(spec: OptimizerSpec, params: Iterable[Any]) -> torch.optim.Optimizer:
    """`params`: parameters, or parameter groups (dicts with "params" and optional per-group
    settings, as a method's `param_groups` returns); frozen parameters are left out.

    `foreach=True`: one multi-tensor kernel per update instead of a Python loop over the
    parameters (torch only picks it by itself for CUDA tensors). The update is the same
    arithmetic, element by element, as the single-tensor loop."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**group, "params": [p for p in group["params"] if p.requires_grad]}
                  for group in params]
        params = [group for group in params if group["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if spec.type == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay, foreach=True)
    if spec.type == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay,
                                foreach=True)
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay,
                             foreach=True)


def build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer):
    if spec.type == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
