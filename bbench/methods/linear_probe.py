"""LinearProbe (methods.md §8): how good is each encoder of a trained multimodal model alone?

The source run's best-validation model is frozen; its head-input features h_m are cached
once for train, validation and test; a fresh Linear(d_m → K) per modality is trained on
the cached training features with the run's optimizer settings, the epoch is picked on
validation, and test accuracy/F1 are reported next to the Unimodal run of that modality.
This is the paper's Figure 2 question: do jointly trained encoders fall behind?
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bbench.config.fields import SpecError, param
from bbench.config.resolve import resolve_spec
from bbench.engine.evaluate import eval_loader, move_batch
from bbench.engine.flops import FlopAccount
from bbench.engine.optim import build_optimizer
from bbench.methods.base import Method, RunContext, method_seed
from bbench.methods.registry import build_method, register_method
from bbench.metrics.classification import accuracy, evaluation_size, macro_f1
from bbench.results.record import RunResult


@dataclass(frozen=True)
class LinearProbeParams:
    source_run: str = ""
    probe_epochs: int = param(30, ge=1)
    unimodal_runs: tuple[str, ...] = ()


@register_method()
class LinearProbe(Method):
    name = "LinearProbe"
    family = "evaluation"
    Params = LinearProbeParams
    procedure = True

    def __init__(self, params: LinearProbeParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        if not params.source_run:
            raise SpecError("LinearProbe: source_run is required: the directory of a finished run "
                            "whose encoders are probed")

    def run_procedure(self, data, run_dir: Path, device: torch.device) -> dict[str, Any]:
        source = RunResult.load(self.params.source_run)
        model, source_method = self._load_source(source, device)
        frozen_before = {k: v.clone() for k, v in model.state_dict().items()}
        flops = FlopAccount()
        with flops.count("features"):
            cached = {split: self._features(source_method, model, data.split(split), data.collate,
                                            device) for split in ("train", "val", "test")}
        metrics: dict[str, Any] = {"source_run": str(source.run_dir), "source_method": source.method,
                                   "source_acc": source.metrics.get("acc")}
        unimodal = self._unimodal_accuracies()
        for i, m in enumerate(source_method.eval_modalities(model)):
            with flops.count("probe"):
                acc, f1, best_epoch = self._probe(i, m, cached, data.info.num_classes, device)
            metrics[f"probe_acc_{m}"] = acc
            metrics[f"probe_f1_{m}"] = f1
            metrics[f"probe_best_epoch_{m}"] = best_epoch
            if m in unimodal:
                metrics[f"unimodal_acc_{m}"] = unimodal[m]
                metrics[f"probe_gap_{m}"] = unimodal[m] - acc
        for key, value in model.state_dict().items():
            if not torch.equal(value, frozen_before[key]):
                raise RuntimeError(f"LinearProbe changed the probed model's {key}")
        metrics["train_flops"] = flops.total
        metrics["test_size"] = evaluation_size(cached["test"][1], data.info.num_classes)
        return metrics

    def _load_source(self, source: RunResult, device: torch.device):
        spec = resolve_spec(base=source.spec)
        if spec.dataset != self.ctx.run_spec.dataset:
            raise SpecError(f"LinearProbe: the source run {source.run_dir} used dataset settings "
                            f"{spec.dataset}, this run {self.ctx.run_spec.dataset}; probe on the same "
                            f"data, modalities and split")
        info = self.ctx.info
        method = build_method(spec.method, spec.method_params,
                              RunContext(info, spec.model, spec.train.seed, device, spec))
        model = method.build_model().to(device)
        weights = source.run_dir / "best_model.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"LinearProbe: expected the source run's weights at {weights}")
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, method

    @torch.no_grad()
    def _features(self, method, model, dataset, collate, device) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, labels = [], []
        for batch in eval_loader(dataset, 256, collate):
            batch = move_batch(batch, device)
            feats.append([f.float() for f in model.encode(batch)])
            labels.append(batch["label"])
        return [torch.cat(parts) for parts in zip(*feats)], torch.cat(labels)

    def _probe(self, index: int, modality: str, cached, num_classes: int,
               device: torch.device) -> tuple[float, float, int]:
        """Train Linear(d_m → K) on cached features; test metrics of the best-validation epoch."""
        train_x, train_y = cached["train"][0][index], cached["train"][1]
        torch.manual_seed(method_seed(self.ctx.seed, f"{self.name}/{modality}"))
        head = nn.Linear(train_x.shape[1], num_classes).to(device)
        spec = self.ctx.run_spec.train
        optimizer = build_optimizer(spec.optimizer, head.parameters())
        shuffle = torch.Generator().manual_seed(method_seed(self.ctx.seed, f"{self.name}/shuffle"))
        loader = DataLoader(TensorDataset(train_x, train_y), batch_size=spec.batch_size,
                            shuffle=True, generator=shuffle)
        best = (-1.0, None, -1)
        for epoch in range(self.params.probe_epochs):
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(head(x), y).backward()
                optimizer.step()
            with torch.no_grad():
                val_x, val_y = cached["val"][0][index], cached["val"][1]
                val_acc = accuracy(head(val_x).argmax(1), val_y)
            if val_acc > best[0]:
                best = (val_acc, {k: v.clone() for k, v in head.state_dict().items()}, epoch)
        head.load_state_dict(best[1])
        with torch.no_grad():
            test_x, test_y = cached["test"][0][index], cached["test"][1]
            pred = head(test_x).argmax(1)
        return accuracy(pred, test_y), macro_f1(pred, test_y, num_classes), best[2]

    def _unimodal_accuracies(self) -> dict[str, float]:
        """Test accuracy of each given Unimodal run, keyed by its modality."""
        found: dict[str, float] = {}
        for path in self.params.unimodal_runs:
            record = RunResult.load(path)
            if record.method != "Unimodal":
                raise SpecError(f"LinearProbe: {path} is a {record.method} run, not a Unimodal run")
            found[record.spec["method_params"]["modality"]] = record.metrics["acc"]
        return found

