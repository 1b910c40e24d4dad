"""Evaluation of a split: fused and per-modality accuracy, macro-F1 and loss.

Evaluation never applies training-only behaviour (methods.md §1.11): eval mode, no grad,
the method's own evaluation logits, every sample counted (no dropped last batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bbench.data.base import Batch, collate_samples, move_batch
from bbench.metrics.classification import accuracies_and_f1
from bbench.models.modes import eval_mode


class Evaluates(Protocol):
    """What evaluation needs of a method (bbench.methods.base.Method provides it)."""

    def eval_logits(self, model: nn.Module, batch: Batch, present: Sequence[bool] | None = None,
                    unimodal: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def eval_modalities(self, model: nn.Module) -> tuple[str, ...]: ...

    def default_evaluation(self) -> bool: ...


def eval_loader(dataset: Dataset, batch_size: int, collate: Callable = collate_samples,
                num_workers: int = 0, **options: Any) -> DataLoader:
    """In order, every sample; `options`: further DataLoader settings (pinning, read-ahead)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                      collate_fn=collate, num_workers=num_workers, **options)


@dataclass
class SplitPredictions:
    labels: torch.Tensor
    fused: torch.Tensor  # predicted classes
    per_modality: dict[str, torch.Tensor]
    loss: float


@torch.no_grad()
def predict(method: Evaluates, model: nn.Module, loader: DataLoader, device: torch.device
            ) -> SplitPredictions:
    """Run the method's evaluation forward over a loader, restoring the model's mode after."""
    names = method.eval_modalities(model)
    labels, fused, per = [], [], {m: [] for m in names}
    loss_sum, count = 0.0, 0
    with eval_mode(model):
        for batch in loader:
            batch = move_batch(batch, device)
            logits, unimodal = method.eval_logits(model, batch)
            y = batch["label"]
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            count += int(y.numel())
            labels.append(y.cpu())
            fused.append(logits.argmax(1).cpu())
            for m, z in zip(names, unimodal):
                per[m].append(z.argmax(1).cpu())
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
    return SplitPredictions(cat(labels), cat(fused), {m: cat(v) for m, v in per.items()},
                            loss_sum / max(count, 1))


def split_metrics(pred: SplitPredictions, num_classes: int) -> dict[str, float]:
    """acc, f1, loss, and acc_<m>, f1_<m> for every modality's own prediction."""
    names = list(pred.per_modality)
    accs, f1s = accuracies_and_f1(torch.stack([pred.fused, *pred.per_modality.values()]),
                                  pred.labels, num_classes)
    metrics = {"acc": accs[0], "f1": f1s[0], "loss": pred.loss}
    for m, acc, f1 in zip(names, accs[1:], f1s[1:]):
        metrics[f"acc_{m}"] = acc
        metrics[f"f1_{m}"] = f1
    return metrics
