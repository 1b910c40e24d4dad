"""CMU-MOSEI (datasets.md §3.8): validate the MulT pickles; optionally write .npy arrays.

The MulT-processed pickles are the distributed artefact. `prepare cmu_mosei` reads every one
present (`mosei_senti_data_noalign.pkl`, `mosei_senti_data.pkl`) with the loaders' restricted
unpickler, checks keys, shapes, feature sizes (text 300, audio 74, vision 35) and label shape,
reports label counts under the binary rule (score < 0 → 0, else 1), and with `--npy` writes
`<out>/<split>_{text,audio,visual,labels}.npy` (float32; ±inf and NaN → 0; split names
train / valid / test as in the pickle) for memory mapping.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bbench.prepare.core import PrepareError, PrepareReport, find_file

FILES = ("mosei_senti_data_noalign.pkl", "mosei_senti_data.pkl")
SPLITS = ("train", "valid", "test")
DIMS = {"text": 300, "audio": 74, "vision": 35}
MODALITY_NAME = {"text": "text", "audio": "audio", "vision": "visual"}


def validate_mosei(data: Any) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(problems, {split: {"n": N, "negative": …, "positive": …}}) of a loaded MulT pickle."""
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    if not isinstance(data, dict):
        return [f"top level is a {type(data).__name__}, expected a dict with {SPLITS}"], counts
    for split in SPLITS:
        part = data.get(split)
        if not isinstance(part, dict):
            problems.append(f"split {split!r} is missing")
            continue
        n = None
        for key, dim in DIMS.items():
            arr = part.get(key)
            if not isinstance(arr, np.ndarray):
                problems.append(f"{split}: {key!r} is missing or not an array")
                continue
            if arr.ndim != 3 or arr.shape[2] != dim:
                problems.append(f"{split}: {key} has shape {arr.shape}, expected (N, L, {dim})")
            n = arr.shape[0] if n is None else n
            if arr.shape[0] != n:
                problems.append(f"{split}: {key} has {arr.shape[0]} samples, others {n}")
        labels = part.get("labels")
        if not isinstance(labels, np.ndarray) or labels.size == 0:
            problems.append(f"{split}: 'labels' is missing")
            continue
        if labels.shape[0] != (n if n is not None else labels.shape[0]) or labels.size != labels.shape[0]:
            problems.append(f"{split}: labels have shape {labels.shape}, expected ({n}, 1, 1)")
            continue
        scores = labels.reshape(-1).astype(np.float64)
        negative = int((scores < 0).sum())
        counts[split] = {"n": int(scores.size), "negative": negative,
                         "positive": int(scores.size - negative)}
    return problems, counts


def sanitise(arr: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def prepare_cmu_mosei(raw: Path, out: Path, opts: Any, report: PrepareReport) -> None:
    from bbench.data.reading import load_pickle

    found = [p for p in (find_file(raw, [name], exclude=[out]) for name in FILES) if p is not None]
    if not found:
        raise PrepareError(f"cmu_mosei: neither {FILES[0]} nor {FILES[1]} under {raw} (the "
                           "MulT-processed pickles; building them from the SDK is not supported)")
    separate = out.resolve() != raw.resolve()
    for path in found:
        data = load_pickle(path, trust=opts.trust_pickles, dataset="cmu_mosei")
        problems, counts = validate_mosei(data)
        tag = "aligned" if path.name == FILES[1] else "unaligned"
        for problem in problems:
            report.failures.append((tag, path.name, problem))
        for split, c in counts.items():
            name = f"{split} ({tag})"
            report.count(name, "listed", c["n"])
            report.count(name, "existing", c["n"])
            report.notes.append(f"{path.name} {split}: {c['n']} samples, label 0 (score < 0): "
                                f"{c['negative']}, label 1: {c['positive']}")
        if separate and not problems:
            link = out / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
        if opts.npy and not problems and (tag == "unaligned" or len(found) == 1):
            for split in SPLITS:
                part = data[split]
                targets = {MODALITY_NAME[k]: part[k] for k in DIMS} | {"labels": part["labels"]}
                for name, arr in targets.items():
                    dst = out / f"{split}_{name}.npy"
                    if dst.exists() and not opts.overwrite:
                        continue
                    _save(dst, sanitise(arr))
            report.notes.append(f"wrote <split>_{{text,audio,visual,labels}}.npy from {path.name}")
    if opts.npy and len(found) > 1:
        report.notes.append(f".npy arrays come from the unaligned pickle {FILES[0]}")
