"""Shared test helpers: small synthetic runs that train in well under a second."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import bbench
from bbench.data.base import DataInfo

# Tests train tiny models, for which one intra-op thread is fastest and immune to a loaded
# machine (2 cores shared with compilers or xdist workers make OpenMP threads spin).
torch.set_num_threads(1)

SMALL = {"epochs": 2, "batch_size": 32, "progress": False,
         "dataset.options": {"n_train": 96, "n_val": 32, "n_test": 48, "dims": 6}}


@pytest.fixture
def small_run(tmp_path: Path):
    """Run a method on a tiny synthetic dataset under tmp_path; returns the RunResult."""

    def go(method: str = "Baseline", dataset: str = "synthetic", **overrides: Any) -> bbench.RunResult:
        settings: dict[str, Any] = dict(SMALL) if dataset == "synthetic" else {"progress": False}
        settings.update(overrides)
        settings.setdefault("output_root", str(tmp_path / "runs"))
        return bbench.run(method, dataset, **settings)

    return go


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
             epoch: int = 0, init_seed: int = 0, lr: float = 0.1):
    """One train_step of a method from a fixed initialisation; returns (trainer, step output).

    Gradients stay in `.grad` after the step, so callers can compare what each method wrote.
    """
    from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
    from bbench.data.base import TensorMultimodalDataset
    from bbench.engine.trainer import Trainer, TrainingData
    from bbench.methods.base import RunContext, StepInfo
    from bbench.methods.registry import build_method

    ctx = RunContext(info, ModelSpec(), 0, torch.device("cpu"))
    method = build_method(method_name, params, ctx)
    torch.manual_seed(init_seed)
    model = method.build_model()
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    spec = TrainSpec(optimizer=OptimizerSpec(lr=lr), epochs=1, progress=False)
    trainer = Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False)
    out = method.train_step(trainer, batch, StepInfo(epoch, 0, 1, 0))
    return trainer, out


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
