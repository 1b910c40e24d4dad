"""Accuracy and macro-F1 over a whole split (metrics.md, Performance)."""
from __future__ import annotations

import numpy as np
import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction; 0.0 for an empty split."""
    return accuracies_and_f1(pred[None], labels, 0)[0][0]


def macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean of per-class F1 over all K classes; a class never true nor predicted counts as 0."""
    return accuracies_and_f1(pred[None], labels, num_classes)[1][0]


def accuracies_and_f1(preds: torch.Tensor, labels: torch.Tensor,
                      num_classes: int) -> tuple[list[float], list[float]]:
    """Accuracy and macro-F1 of each row of `preds` [R, N] (e.g. the fused prediction and
    every modality's) against `labels` [N], from one confusion count of all rows.
    `num_classes` 0: the accuracies only (the F1s are then 0.0).

    In NumPy on the host: validation runs every epoch, and a few dozen small torch operator
    calls cost a small run's epoch more than its steps' own bookkeeping (docs/benchmarks.md).
    Counts are integers, so accuracies are exact; an F1 is the same IEEE quotient as in torch.
    """
    pred = preds.detach().cpu().numpy().astype(np.int64, copy=False)
    true = labels.detach().cpu().numpy().astype(np.int64, copy=False)
    rows, n = pred.shape
    if n == 0:
        return [0.0] * rows, [0.0] * rows
    # Sums over a row, divided: what NumPy's mean computes, in fewer calls.
    acc = ((pred == true).sum(1) / n).tolist()
    if num_classes == 0:
        return acc, [0.0] * rows
    k = num_classes
    cells = (np.arange(0, rows * k, k)[:, None] + true) * k + pred
    confusion = np.bincount(cells.ravel(), minlength=rows * k * k).reshape(rows, k, k)
    tp = confusion.diagonal(axis1=1, axis2=2)
    denom = confusion.sum(1) + confusion.sum(2)  # predicted + true counts
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return acc, (f1.sum(1) / k).tolist()


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
