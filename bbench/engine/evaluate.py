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
from bbench.engine.loading import new_loader
from bbench.metrics.classification import accuracies_and_f1
from bbench.models.modes import eval_mode


class Evaluates(Protocol):
    """What evaluation needs of a method (bbench.methods.base.Method provides it)."""

    def eval_logits(self, model: nn.Module, batch: Batch, present: Sequence[bool] | None = None,
                    unimodal: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def eval_modalities(self, model: nn.Module) -> tuple[str, ...]: ...

    def default_evaluation(self) -> bool: ...

    def default_fused(self, model: nn.Module, batch: Batch, present: Sequence[bool] | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def default_unimodal(self, model: nn.Module, features: Sequence[torch.Tensor]
                         ) -> list[torch.Tensor]: ...


def eval_loader(dataset: Dataset, batch_size: int, collate: Callable = collate_samples,
                num_workers: int = 0, **options: Any) -> DataLoader:
    """In order, every sample; `options`: further DataLoader settings (pinning, read-ahead)."""
    return new_loader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                      collate_fn=collate, num_workers=num_workers, **options)


@dataclass
class SplitPredictions:
    labels: torch.Tensor
    predicted: torch.Tensor
    """[1 + M, N] predicted classes: row 0 the fused logits', row 1 + i modality `names[i]`'s."""
    names: tuple[str, ...]
    loss: float

    @property
    def fused(self) -> torch.Tensor:
        return self.predicted[0]

    @property
    def per_modality(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.predicted[1:]))


UNIMODAL_ROWS = 4096
"""Samples whose per-modality logits `predict` forms together: it holds their features (and at
most one batch more), 4 KiB a sample for a ResNet18 pair, 6 KiB for FOOD-101's ViT-B/16 and BERT."""


class _HeldFeatures:
    """The fused logits and features of the batches since the last flush, for a method with
    the default evaluation: their per-modality logits are formed in one head call per
    modality over all of them instead of one per batch. A head's per-modality logits are a
    function of each sample's features alone, as its fused logits are (a model's
    `unimodal_logits` must be: docs/adding-a-method.md), so the rows are those of the
    per-batch calls up to the rounding of a matrix product over more rows."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.features: list[list[torch.Tensor]] = []
        self.rows = 0

    def add(self, logits: torch.Tensor, features: list[torch.Tensor]) -> None:
        self.logits.append(logits)
        self.features.append([_own_storage(f) for f in features])
        self.rows += logits.shape[0]

    def predicted(self, method: Evaluates, model: nn.Module) -> torch.Tensor:
        """[1 + M, rows] argmax classes of the held batches (on the host); empties the hold."""
        features = [torch.cat(parts) for parts in zip(*self.features)]
        unimodal = method.default_unimodal(model, features)
        predicted = _argmax_rows([torch.cat(self.logits), *unimodal])
        self.logits, self.features, self.rows = [], [], 0
        return predicted


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a copy if it views a larger tensor's storage: a transformer's class token
    `y[:, 0]` held across batches would keep the whole [B, tokens, d] output alive."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def _argmax_rows(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """[R, N]: each [N, K] logits' argmax class, in one operator call and one host copy."""
    return torch.stack(list(logits)).argmax(-1).cpu()


@torch.no_grad()
def predict(method: Evaluates, model: nn.Module, loader: DataLoader, device: torch.device
            ) -> SplitPredictions:
    """Run the method's evaluation forward over a loader, restoring the model's mode after.

    Small validation splits are evaluated every epoch, where each further operator call per
    batch shows (docs/benchmarks.md, harness overhead), so: one argmax over the fused and
    every modality's logits stacked, one copy to the host; the batch losses summed once at
    the end (in float64, as a Python sum of their float32 values would be); and for a method
    with the default evaluation (`eval_logits` = the model's encode, fuse and per-modality
    head, `Method.default_evaluation`) the per-modality logits of up to `UNIMODAL_ROWS`
    samples formed in one head call each (the same logits up to the rounding of a matrix
    product over more rows: a prediction can differ only where two classes' logits tie to
    the last bits, as it can between two evaluation batch sizes).
    """
    names = tuple(method.eval_modalities(model))
    held = _HeldFeatures() if method.default_evaluation() else None
    labels: list[torch.Tensor] = []
    predicted: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    with eval_mode(model):
        for batch in loader:
            batch = move_batch(batch, device)
            if held is None:
                logits, unimodal = method.eval_logits(model, batch)
                predicted.append(_argmax_rows([logits, *unimodal]))
            else:  # Method.eval_logits, its per-modality half deferred
                logits, features = method.default_fused(model, batch)
                held.add(logits, features)
                if held.rows >= UNIMODAL_ROWS:
                    predicted.append(held.predicted(method, model))
            y = batch["label"]
            losses.append(F.cross_entropy(logits.float(), y, reduction="sum"))
            labels.append(y)
        if held is not None and held.rows:
            predicted.append(held.predicted(method, model))
    if not labels:
        return SplitPredictions(torch.zeros(0, dtype=torch.long),
                                torch.zeros((1 + len(names), 0), dtype=torch.long), names, 0.0)
    labels_all = torch.cat(labels).cpu()
    loss_sum = float(torch.stack(losses).double().sum())
    return SplitPredictions(labels_all, torch.cat(predicted, 1), names,
                            loss_sum / labels_all.numel())


def split_metrics(pred: SplitPredictions, num_classes: int) -> dict[str, float]:
    """acc, f1, loss, and acc_<m>, f1_<m> for every modality's own prediction."""
    accs, f1s = accuracies_and_f1(pred.predicted, pred.labels, num_classes)
    metrics = {"acc": accs[0], "f1": f1s[0], "loss": pred.loss}
    for m, acc, f1 in zip(pred.names, accs[1:], f1s[1:]):
        metrics[f"acc_{m}"] = acc
        metrics[f"f1_{m}"] = f1
    return metrics
