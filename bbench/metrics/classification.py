"""Accuracy and macro-F1 over a whole split (metrics.md, Performance)."""
from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction; 0.0 for an empty split."""
    if labels.numel() == 0:
        return 0.0
    return float((pred == labels).double().mean())


def macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean of per-class F1 over all K classes; a class never true nor predicted counts as 0."""
    pred = pred.long().cpu()
    labels = labels.long().cpu()
    idx = labels * num_classes + pred
    confusion = torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
    tp = confusion.diag().double()
    denom = confusion.sum(0).double() + confusion.sum(1).double()  # predicted + true counts
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return float(f1.mean())


def evaluation_size(labels: torch.Tensor, num_classes: int) -> dict[str, int]:
    """How large the evaluated split is: what one sample's prediction is worth in each metric.

    Regression tracking needs it (bbench.report.compare): on a 12-sample split one flipped
    prediction moves accuracy by 1/12 whatever the CPU, so a tolerance below that is luck.
    `min_class_support` is the smallest positive class count (macro-F1's most sensitive class).
    """
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes)
    present = counts[counts > 0]
    return {"samples": int(labels.numel()), "classes": int(num_classes),
            "min_class_support": int(present.min()) if present.numel() else 0}
