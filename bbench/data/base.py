"""What every dataset gives the harness: splits of dict samples plus a description.

A sample is a dict with one tensor per modality name, `label` (int64) and `index` (its
position in the split, which sample-level valuation keys on). Loaders may add `id`.
Resampled training sets (modality valuation) add `keep`, a bool row of length M saying
which modalities' features the model keeps for that sample.

Image modalities (frames, flow planes) leave a loader as uint8 pixels (…, C, H, W); every
consumer brings a batch to its device with `move_batch`, which normalises them there
(`transforms.normalise_pixels`) into the float32 `DataInfo.input_dtypes` declares. So the
batches that cross the workers' shared memory and the host-to-device copy are a quarter of
their float32 size, and no method or model ever sees raw pixels.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate

from bbench.data.transforms import normalise_pixels

Batch = dict[str, Any]

RESERVED_BATCH_KEYS = ("label", "index", "keep", "id")
_MODALITY_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def check_modality_names(names: Sequence[str]) -> tuple[str, ...]:
    """Modality names become batch keys and module names: plain, distinct and not reserved."""
    if not names:
        raise ValueError("at least one modality is needed")
    for name in names:
        if not _MODALITY_NAME.match(name) or name in RESERVED_BATCH_KEYS:
            raise ValueError(f"modality name {name!r} is not allowed: use letters, digits and '_' "
                             f"and none of {', '.join(RESERVED_BATCH_KEYS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"modality names must be distinct, got {', '.join(names)}")
    return tuple(names)


@dataclass(frozen=True)
class DataInfo:
    """The facts about a dataset that models and methods may read."""

    name: str
    modalities: tuple[str, ...]
    num_classes: int
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, torch.dtype]  # as models see them: after `move_batch`


@dataclass
class DataModule:
    """Train / validation / test splits of one dataset, and how to batch them.

    The trainer and methods receive `train` and `val` only; `test` is read once by the
    final evaluation (architecture principle 5).
    """

    info: DataInfo
    train: Dataset
    val: Dataset
    test: Dataset
    collate: Callable[[Any], Batch] = None  # type: ignore[assignment]
    train_eval: Dataset | None = None  # the train split with evaluation transforms (valuation passes)

    def __post_init__(self) -> None:
        if self.collate is None:
            self.collate = collate_samples

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def collate_samples(samples: Any) -> Batch:
    """Default collation that also accepts a batch a dataset already built (`__getitems__`)."""
    if isinstance(samples, dict):
        return samples
    return default_collate(list(samples))


class TensorMultimodalDataset(Dataset):
    """A split held in memory as one tensor per modality (mfeat, synthetic data).

    `__getitems__` returns a whole collated batch with a single gather per modality, which
    keeps small CPU runs fast: the DataLoader hands it to `collate_samples` unchanged.
    """

    def __init__(self, features: dict[str, torch.Tensor], labels: torch.Tensor,
                 ids: Sequence[str] | None = None) -> None:
        n = int(labels.shape[0])
        for name, tensor in features.items():
            if tensor.shape[0] != n:
                raise ValueError(f"modality {name!r} has {tensor.shape[0]} rows, labels have {n}")
        self.features = features
        self.labels = labels.long()
        self.ids = list(ids) if ids is not None else [str(i) for i in range(n)]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> Batch:
        sample: Batch = {m: t[i] for m, t in self.features.items()}
        sample["label"] = self.labels[i]
        sample["index"] = torch.tensor(i, dtype=torch.long)
        return sample

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch: Batch = {m: t.index_select(0, idx) for m, t in self.features.items()}
        batch["label"] = self.labels.index_select(0, idx)
        batch["index"] = idx
        return batch


class KeepMaskDataset(Dataset):
    """A training set of base samples, each with a per-modality feature-keep row.

    Used by modality valuation: the originals (keep = all ones) plus copies that keep a
    single modality. `index` stays the base sample's index.
    """

    def __init__(self, base: Dataset, entries: torch.Tensor, keep: torch.Tensor) -> None:
        if entries.ndim != 1 or keep.ndim != 2 or keep.shape[0] != entries.shape[0]:
            raise ValueError(f"entries {tuple(entries.shape)} and keep {tuple(keep.shape)} disagree")
        self.base = base
        self.entries = entries.long()
        self.keep = keep.bool()

    def __len__(self) -> int:
        return int(self.entries.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the base split (its augmentations are keyed by epoch)."""
        set_epoch = getattr(self.base, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __getitem__(self, i: int) -> Batch:
        sample = dict(self.base[int(self.entries[i])])
        sample["keep"] = self.keep[i]
        return sample

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        base_idx = self.entries.index_select(0, idx).tolist()
        getitems = getattr(self.base, "__getitems__", None)
        batch = getitems(base_idx) if getitems else default_collate([self.base[j] for j in base_idx])
        batch = dict(batch)
        batch["keep"] = self.keep.index_select(0, idx)
        return batch


def split_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a split, in index order (cheap for in-memory datasets)."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels
    return torch.stack([torch.as_tensor(dataset[i]["label"]) for i in range(len(dataset))])


def model_input(value: torch.Tensor) -> torch.Tensor:
    """A batch entry as models take it: uint8 pixels normalised to float32, the rest as is."""
    return normalise_pixels(value) if value.dtype == torch.uint8 else value


def move_batch(batch: Batch, device: torch.device) -> Batch:
    """Every tensor of a batch on `device` as models take it (`model_input`: pixels are
    normalised after the move); other entries, e.g. ids, unchanged."""
    return {k: model_input(v.to(device, non_blocking=True)) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
