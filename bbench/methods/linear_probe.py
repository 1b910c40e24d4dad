"""LinearProbe (methods.md §8): how good is each encoder of a trained multimodal model alone?

The source run's best-validation model is frozen; its head-input features h_m are cached
once for train (under evaluation transforms), validation and test; a fresh Linear(d_m → K)
per modality is trained on the cached training features with the source run's optimizer
and batch size, the epoch is picked on validation, and test accuracy/F1 are reported next
to the Unimodal run of that modality. Both runs are declared `inputs`: named by
`source_run` / `unimodal_runs`, or found (same settings) or trained by the runner.
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
from bbench.config.specs import TrainSpec
from bbench.data.base import move_batch
from bbench.engine.copies import fit_copy
from bbench.engine.evaluate import eval_loader
from bbench.engine.flops import FlopAccount
from bbench.engine.selected import load_selected_model
from bbench.methods.base import Method, method_seed
from bbench.methods.facts import Family, RunInput
from bbench.methods.registry import register_method
from bbench.metrics.classification import accuracy, evaluation_size, macro_f1
from bbench.results.record import RunResult


@dataclass(frozen=True)
class LinearProbeParams:
    source_run: str = param("", doc="run whose encoders are probed (default: the Baseline run "
                                    "of the same settings, found or trained)")
    probe_epochs: int = param(30, ge=1)
    unimodal_runs: tuple[str, ...] = param((), doc="Unimodal runs to compare with (default: one "
                                                   "per modality, found or trained)")


@register_method()
class LinearProbe(Method):
    name = "LinearProbe"
    family = Family.EVALUATION
    Params = LinearProbeParams
    procedure = True
    inputs = (RunInput("source", "Baseline", param="source_run"),
              RunInput("unimodal", "Unimodal", per_modality=True, param="unimodal_runs"))

    def run_procedure(self, data, run_dir: Path, device: torch.device) -> dict[str, Any]:
        source = self.ctx.inputs["source"][0]
        model, source_method = self._load_source(source, device)
        frozen_before = {k: v.clone() for k, v in model.state_dict().items()}
        flops = FlopAccount()
        # Features under evaluation transforms (§8 step 3): the training split's own loader
        # would crop and flip frames at random.
        splits = {"train": data.train_eval if data.train_eval is not None else data.train,
                  "val": data.val, "test": data.test}
        with flops.count("features"):
            cached = {split: self._features(model, dataset, data.collate, device)
                      for split, dataset in splits.items()}
        metrics: dict[str, Any] = {"source_run": str(source.run_dir), "source_method": source.method,
                                   "source_acc": source.metrics.get("acc")}
        unimodal = self._unimodal_accuracies()
        train_spec = resolve_spec(base=source.spec).train  # §8 step 4: the source run's optimizer
        for i, m in enumerate(source_method.eval_modalities(model)):
            with flops.count("probe"):
                acc, f1, best_epoch = self._probe(i, m, cached, data.info.num_classes, device,
                                                  train_spec)
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

    def _load_source(self, source: RunResult, device: torch.device) -> tuple[nn.Module, Method]:
        """The source run's frozen best-validation model and its method (§8 step 2)."""
        spec = resolve_spec(base=source.spec)
        if spec.dataset != self.ctx.run_spec.dataset:
            raise SpecError(f"LinearProbe: the source run {source.run_dir} used dataset settings "
                            f"{spec.dataset}, this run {self.ctx.run_spec.dataset}; probe on the same "
                            f"data, modalities and split")
        selected = load_selected_model(source, self.ctx.info, device)
        return selected.model, selected.method

    @torch.no_grad()
    def _features(self, model, dataset, collate, device) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats, labels = [], []
        for batch in eval_loader(dataset, 256, collate):
            batch = move_batch(batch, device)
            feats.append([f.float() for f in model.encode(batch)])
            labels.append(batch["label"])
        return [torch.cat(parts) for parts in zip(*feats)], torch.cat(labels)

    def _probe(self, index: int, modality: str, cached, num_classes: int, device: torch.device,
               train_spec: TrainSpec) -> tuple[float, float, int]:
        """Train Linear(d_m → K) on cached features; test metrics of the best-validation epoch.

        Optimizer and batch size are the source run's (methods.md §8 step 4), so a probe of
        a run trained with other settings is trained like that run.
        """
        train_x, train_y = cached["train"][0][index], cached["train"][1]
        val_x, val_y = cached["val"][0][index], cached["val"][1]
        torch.manual_seed(method_seed(self.ctx.seed, f"{self.name}/{modality}"))
        head = nn.Linear(train_x.shape[1], num_classes).to(device)
        shuffle = torch.Generator().manual_seed(method_seed(self.ctx.seed, f"{self.name}/shuffle"))
        loader = DataLoader(TensorDataset(train_x, train_y), batch_size=train_spec.batch_size,
                            shuffle=True, generator=shuffle)
        fitted = fit_copy(head, lambda epoch: loader, lambda h, xy: F.cross_entropy(h(xy[0]), xy[1]),
                          lambda h: accuracy(h(val_x).argmax(1), val_y),
                          self.params.probe_epochs, train_spec.optimizer)
        with torch.no_grad():
            test_x, test_y = cached["test"][0][index], cached["test"][1]
            pred = head(test_x).argmax(1)
        return accuracy(pred, test_y), macro_f1(pred, test_y, num_classes), fitted.best_epoch

    def _unimodal_accuracies(self) -> dict[str, float]:
        """Test accuracy of each input Unimodal run, keyed by its modality."""
        found: dict[str, float] = {}
        for record in self.ctx.inputs.get("unimodal", []):
            if record.method != "Unimodal":
                raise SpecError(f"LinearProbe: {record.run_dir} is a {record.method} run, not a "
                                f"Unimodal run")
            found[record.spec["method_params"]["modality"]] = record.metrics["acc"]
        return found
