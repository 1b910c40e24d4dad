"""The seeded, stratified carve-out that every loader uses to make splits (datasets.md §0.3).

One rule, implemented once, so that a validation set (or mfeat's test set) is a function of
(sample ids, labels, fraction, split seed) only: not of the order in which a loader happened
to list its files, and not of the run seed. Every method and every run seed therefore sees
the same validation samples, and a list written to disk can be checked against a rebuild.
"""
from __future__ import annotations

import math
from collections import Counter
from numbers import Integral
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

VAL_FRACTION = 0.1
"""The §0.3 default: val = 10% of the usable train samples when a format has no val split."""


def carve_count(n: int, fraction: float) -> int:
    """How many of a class's `n` samples are carved out: floor(fraction·n + 0.5), ≥1 when n ≥ 2.

    Computed in float64 literally as written in the spec, so any reimplementation of the
    rule agrees to the sample.
    """
    if n <= 1:
        return 0
    return max(1, math.floor(fraction * n + 0.5))


def first_duplicate(items: Sequence[Hashable]) -> Hashable | None:
    """The first item that occurs more than once, or None."""
    counts = Counter(items)
    return next((item for item in items if counts[item] > 1), None)


def id_order(ids: Sequence[object] | np.ndarray) -> np.ndarray:
    """Positions of `ids` sorted by id: numerically when all ids are integers, else as strings.

    Duplicate ids are rejected: with two equal ids the order, and so the split, would depend
    on how the loader listed the samples.
    """
    numeric = all(isinstance(i, Integral) and not isinstance(i, bool) for i in ids)
    keys: list[int] | list[str] = (
        [int(i) for i in ids if isinstance(i, Integral)] if numeric else [str(i) for i in ids])
    duplicate = first_duplicate(keys)
    if duplicate is not None:
        raise ValueError(f"carve-out: sample id {duplicate!r} occurs more than once")
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def stratified_carve_out(ids: Sequence[object] | np.ndarray, labels: Sequence[int] | np.ndarray,
                         fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split samples into (kept, carved) positions with the §0.3 rule, exactly.

    Samples are sorted by id; then, for each class in ascending label order, that class's
    samples are permuted with ONE `numpy.random.default_rng(seed)` generator consumed class
    after class, and the first `carve_count(n_c, fraction)` of them are carved out. Both
    returned lists hold positions into `ids`/`labels`, in ascending order.
    """
    label_array = np.asarray(labels)
    if len(ids) != label_array.shape[0] or label_array.ndim != 1:
        raise ValueError(f"carve-out: {len(ids)} ids but labels of shape {label_array.shape}")
    if label_array.size and not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"carve-out: labels must be integers, got dtype {label_array.dtype}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"carve-out: fraction={fraction!r} is out of range; need 0 < fraction < 1")
    order = id_order(ids)
    sorted_labels = label_array[order]
    rng = np.random.default_rng(seed)
    carved: list[int] = []
    for label in np.unique(sorted_labels):
        members = order[sorted_labels == label]
        permuted = rng.permutation(members)
        carved.extend(int(p) for p in permuted[:carve_count(len(members), fraction)])
    carved_set = set(carved)
    kept = [p for p in range(len(ids)) if p not in carved_set]
    return kept, sorted(carved)


def val_list_path(directory: str | Path, dataset: str, split_seed: int) -> Path:
    """Where a run keeps its carved validation ids: `<directory>/<dataset>-val-seed<k>.txt`."""
    return Path(directory) / f"{dataset}-val-seed{split_seed}.txt"


def write_id_list(path: str | Path, ids: Sequence[object]) -> None:
    """Write one sample id per line (UTF-8, '\\n'), creating the folder as needed."""
    target = Path(path)
    for sample_id in ids:
        text = str(sample_id)
        if not text or "\n" in text or "\r" in text or text != text.strip():
            raise ValueError(f"{target}: sample id {sample_id!r} cannot be written one per line")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def read_id_list(path: str | Path) -> list[str]:
    """Sample ids of a list file, one per line; blank lines and CR line ends are ignored."""
    source = Path(path)
    ids = [line.strip() for line in source.read_text(encoding="utf-8-sig").splitlines()]
    ids = [i for i in ids if i]
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise ValueError(f"{source}: sample id {duplicate!r} occurs more than once")
    return ids
