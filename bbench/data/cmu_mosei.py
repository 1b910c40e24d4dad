"""CMU-MOSEI (`cmu_mosei`): binary sentiment from audio, visual and text features (§2.7).

The MulT-style pickle (`mosei_senti_data_noalign.pkl`, or `mosei_senti_data.pkl` when
aligned) holds `train` / `valid` / `test` dicts of (N, L, D) arrays `audio` (74-d COVAREP),
`vision` (35-d Facet, bbench modality `visual`) and `text` (300-d GloVe) plus `labels`
(N, 1, 1) sentiment scores; `label = 0 if score < 0 else 1`. It is read once per process
with the restricted unpickler, converted to float32 and sanitised (±inf and NaN → 0, every
modality). Per-split `.npy` files written by `bbench prepare cmu_mosei` are memory-mapped
instead when present.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from bbench.config.fields import param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataInfo, DataModule
from bbench.data.errors import DataFormatError, malformed, missing
from bbench.data.file_splits import assemble
from bbench.data.options import dataset_root, pick_option
from bbench.data.reading import load_numpy, load_pickle
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities

NAME = "cmu_mosei"
MODALITIES = ("audio", "visual", "text")
NUM_CLASSES = 2
PICKLE_KEYS = {"audio": "audio", "visual": "vision", "text": "text"}
"""bbench modality → key in the pickle."""
SPLITS = {"train": "train", "val": "valid", "test": "test"}
"""bbench split → key in the pickle."""
FEATURE_DIMS = {"audio": 74, "visual": 35, "text": 300}

LAYOUT = """<root>/                           [dataset_path]
  mosei_senti_data_noalign.pkl     unaligned (default): {train|valid|test: {text (N, L, 300),
                                   audio (N, L, 74), vision (N, L, 35), labels (N, 1, 1)[, id]}}
  mosei_senti_data.pkl             word-aligned [if_align: true]
  (<split>_{text,audio,visual,labels}.npy   optional float32 arrays written by
                                   `bbench prepare cmu_mosei --npy`, split = train/valid/test)"""


@dataclass(frozen=True)
class CmuMoseiOptions:
    """CMU-MOSEI options (BalanceMM keys `dataset_path`, `data`, `if_align` accepted)."""

    aligned: Optional[bool] = param(None, doc="read the word-aligned pickle (default: unaligned)")
    pickle_file: Optional[str] = param(None, doc="explicit pickle path (relative to the root)")
    use_npy: bool = param(True, doc="memory-map <split>_*.npy files when all are present")
    trust_pickles: bool = param(False, doc="read the pickle with plain pickle (runs code)")
    verify_samples: int = param(1, ge=0)
    data: str = param("mosei_senti", doc="BalanceMM file prefix: <data>_data[_noalign].pkl")
    if_align: Optional[bool] = param(None, doc="BalanceMM alias of aligned")
    dataset_path: Optional[str] = param(None, doc="BalanceMM alias of dataset.root")


def binary_labels(scores: np.ndarray) -> np.ndarray:
    """0 for a negative sentiment score, 1 otherwise (a score of exactly 0 is positive)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)[:, 0]
    return np.where(flat < 0, 0, 1).astype(np.int64)


def sanitise(array: Any) -> np.ndarray:
    """float32 with ±inf and NaN replaced by 0."""
    out = np.asarray(array, dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0, copy=out is array)


def _id_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return "_".join(_id_text(v) for v in value.reshape(-1).tolist())
    if isinstance(value, (list, tuple)):
        return "_".join(_id_text(v) for v in value)
    return str(value)


@functools.lru_cache(maxsize=1)
def _load_pickle_cached(path: str, mtime_ns: int, size: int, trust: bool) -> Mapping[str, Any]:
    data = load_pickle(Path(path), trust, dataset=NAME)
    return _check_and_convert(data, Path(path))


def _check_and_convert(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    """Validate the structure; float32 + sanitised feature arrays, int64 labels, ids."""
    if not isinstance(data, dict):
        raise malformed(NAME, path, f"holds a {type(data).__name__}, expected a dict with keys "
                                    f"train/valid/test")
    out: dict[str, dict[str, Any]] = {}
    for split, key in SPLITS.items():
        part = data.get(key)
        if not isinstance(part, dict):
            raise malformed(NAME, path, f"has no split {key!r} (keys: {sorted(map(str, data))})")
        for field_name in (*PICKLE_KEYS.values(), "labels"):
            if field_name not in part:
                raise malformed(NAME, path, f"split {key!r} has no array {field_name!r}")
        n = len(part["labels"])
        converted: dict[str, Any] = {"labels": binary_labels(part["labels"])}
        for modality, field_name in PICKLE_KEYS.items():
            array = sanitise(part[field_name])
            if array.ndim != 3 or array.shape[0] != n:
                raise malformed(NAME, path, f"{key}/{field_name} has shape {array.shape}; expected "
                                            f"({n}, L, {FEATURE_DIMS[modality]})")
            converted[modality] = array
        ids = part.get("id")
        converted["ids"] = ([_id_text(v) for v in ids] if ids is not None and len(ids) == n
                            else [f"{key}-{i}" for i in range(n)])
        out[split] = converted
    return out


def _npy_splits(root: Path, modalities: tuple[str, ...]) -> Optional[dict[str, dict[str, Any]]]:
    """Memory-mapped `<split>_<modality>.npy` arrays, if every one needed is present."""
    out: dict[str, dict[str, Any]] = {}
    for split, key in SPLITS.items():
        prefix = next((p for p in (key, split) if (root / f"{p}_labels.npy").is_file()), None)
        if prefix is None or not all((root / f"{prefix}_{m}.npy").is_file() for m in modalities):
            return None
        labels = load_numpy(root / f"{prefix}_labels.npy", NAME)
        part: dict[str, Any] = {"labels": binary_labels(labels)}
        for m in modalities:
            array = load_numpy(root / f"{prefix}_{m}.npy", NAME, mmap=True)
            if array.ndim != 3 or array.shape[0] != len(labels):
                raise malformed(NAME, root / f"{prefix}_{m}.npy",
                                f"has shape {array.shape}; expected ({len(labels)}, L, D)")
            part[m] = array
        part["ids"] = [f"{key}-{i}" for i in range(len(labels))]
        out[split] = part
    return out


class MoseiReader:
    def __init__(self, part: Mapping[str, Any], modalities: tuple[str, ...]) -> None:
        self.dataset = NAME
        self.part = part
        self.ids = list(part["ids"])
        self.labels = [int(x) for x in part["labels"]]
        self.modalities = modalities

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]:
        return {m: torch.from_numpy(sanitise(np.array(self.part[m][position])))
                for m in self.modalities}


def build_cmu_mosei(spec: DatasetSpec, options: CmuMoseiOptions) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT, options.dataset_path)
    aligned = bool(pick_option(options, "aligned", "if_align", owner=owner))
    # prepare writes the .npy arrays from the unaligned pickle only
    splits = _npy_splits(root, modalities) if options.use_npy and not aligned else None
    if splits is None:
        name = options.pickle_file or f"{options.data}_data{'' if aligned else '_noalign'}.pkl"
        path = Path(os.path.expanduser(name))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise missing(NAME, "pickle", path, LAYOUT)
        st = path.stat()
        splits = _load_pickle_cached(str(path.resolve()), st.st_mtime_ns, st.st_size,
                                     options.trust_pickles)
    shapes = {m: tuple(int(d) for d in splits["train"][m].shape[1:]) for m in modalities}
    for split, part in splits.items():
        for m in modalities:
            if tuple(part[m].shape[1:]) != shapes[m]:
                raise DataFormatError(f"{NAME}: {m} of split {split} has per-sample shape "
                                      f"{tuple(part[m].shape[1:])}, train has {shapes[m]}")
        if not len(part["labels"]):
            raise DataFormatError(f"{NAME}: split {SPLITS[split]!r} is empty")
    info = DataInfo(name=NAME, modalities=modalities, num_classes=NUM_CLASSES,
                    input_shapes=shapes, input_dtypes={m: torch.float32 for m in modalities})
    readers = {split: MoseiReader(splits[split], modalities) for split in SPLITS}
    return assemble(info, readers["train"], range(len(readers["train"].ids)), readers["val"],
                    range(len(readers["val"].ids)), readers["test"],
                    range(len(readers["test"].ids)), verify=options.verify_samples)


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_cmu_mosei, options=CmuMoseiOptions, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=NUM_CLASSES,
    description="CMU-MOSEI binary sentiment: COVAREP audio, Facet visual, GloVe text sequences",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"), aliases=("CMUMOSEI", "MOSEI"))
