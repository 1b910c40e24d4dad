"""Splits backed by files, and their assembly into a DataModule with the validation carve-out.

One job: a `FileSplit` is the torch `Dataset` of one split (positions into a reader's records,
augmentation keyed by `sample_rng`); `carve_and_assemble` carves validation out of the usable
train samples (§0.3, or takes `val_list`), keeps the carved id list (in `split_dir` or the bbench
cache, never the data), builds the train/val/test/train_eval splits and reads a few samples to
check their shapes before any training starts. The carve-out algorithm itself is
`bbench.data.splits`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bbench.data.base import DataInfo, DataModule, model_input
from bbench.data.errors import DataFormatError, MissingDataError
from bbench.data.index_cache import cache_root, digest
from bbench.data.options import CommonOptions
from bbench.data.skips import SkipReport, no_usable_samples
from bbench.data.splits import (VAL_FRACTION, read_id_list, stratified_carve_out, val_list_path,
                                write_id_list)
from bbench.data.transforms import sample_rng

log = logging.getLogger("bbench")


def split_dir_for(options_split_dir: Optional[str], cache_dir: Optional[str], dataset: str,
                  key: Any) -> Path:
    """Where carved validation id lists live: the option, else the bbench cache (never data dir)."""
    if options_split_dir:
        return Path(os.path.expanduser(options_split_dir))
    return cache_root(cache_dir) / "splits" / f"{dataset}-{digest(key, 12)}"


def carve_validation(dataset: str, ids: Sequence[str], labels: Sequence[int], split_seed: int,
                     val_list: Optional[str], split_dir: Path) -> tuple[list[int], list[int], Path]:
    """(train positions, val positions, id-list path) of the usable train samples (§0.3).

    An explicit `val_list` file wins. Otherwise the carve-out's id list is read from
    `split_dir/<dataset>-val-seed<k>.txt` when it exists and still matches the data, else
    computed with `stratified_carve_out` and written there.
    """
    position = {sample_id: p for p, sample_id in enumerate(ids)}

    def from_ids(listed: Sequence[str]) -> tuple[list[int], list[int]]:
        val = sorted(position[i] for i in listed if i in position)
        val_set = set(val)
        return [p for p in range(len(ids)) if p not in val_set], val

    if val_list:
        path = Path(os.path.expanduser(val_list))
        if not path.is_file():
            raise MissingDataError(f"{dataset}: val_list file not found: {path} (one sample id "
                                   f"per line)")
        listed = read_id_list(path)
        unknown = [i for i in listed if i not in position]
        if unknown:
            log.warning("%s: %d of %d ids in val_list %s are not usable train samples (first: "
                        "%s); they are ignored", dataset, len(unknown), len(listed), path,
                        ", ".join(unknown[:3]))
        kept, val = from_ids(listed)
        if not val:
            raise DataFormatError(f"{dataset}: none of the ids in val_list {path} is a usable "
                                  f"train sample (first listed: {listed[:1]})")
        return kept, val, path
    path = val_list_path(split_dir, dataset, split_seed)
    if path.is_file():
        try:
            listed = read_id_list(path)
        except (OSError, ValueError):
            listed = []
        if listed and all(i in position for i in listed):
            kept, val = from_ids(listed)
            return kept, val, path
        log.warning("%s: validation id list %s does not match the usable train samples any more; "
                    "carving it out again", dataset, path)
    kept, val = stratified_carve_out(list(ids), list(labels), VAL_FRACTION, split_seed)
    try:
        write_id_list(path, [ids[p] for p in val])
    except OSError as err:
        log.warning("%s: could not write the validation id list %s: %s", dataset, path, err)
    return kept, val, path


class SampleReader(Protocol):
    """Loads the modality tensors of one record (train transforms when `rng` is given)."""

    dataset: str
    ids: list[str]
    labels: list[int]

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]: ...


class FileSplit(Dataset):
    """One split of a file-backed dataset: positions into a reader's records.

    `train=True` draws augmentation from `sample_rng(seed, epoch, index)`; otherwise the
    sample is deterministic. `seed` defaults to torch's initial seed at construction (the
    run seed: `bbench.run` seeds torch before building the data); `set_seed` overrides it.
    """

    def __init__(self, reader: SampleReader, positions: Sequence[int], split: str, train: bool,
                 seed: Optional[int] = None, skipped: Sequence[tuple[str, str]] = ()) -> None:
        self.reader = reader
        self.positions = [int(p) for p in positions]
        self.split = split
        self.train = train
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self.epoch = 0
        self.ids = [reader.ids[p] for p in self.positions]
        self.labels = torch.tensor([reader.labels[p] for p in self.positions], dtype=torch.long)
        self.skipped = list(skipped)
        self.id_list_path: Optional[Path] = None  # set on carved validation splits
        self._warned: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        """Key training augmentation on this epoch (the trainer calls it before each epoch)."""
        self.epoch = int(epoch)

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def warn_once(self, topic: str, message: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            log.warning("%s (split %s)", message, self.split)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.reader.dataset} {self.split}: index {index} out of range")
        index = int(index) % len(self)
        rng = sample_rng(self.seed, self.epoch, index) if self.train else None
        sample: dict[str, Any] = self.reader.load(self.positions[index], rng, self.warn_once)
        sample["label"] = self.labels[index]
        sample["index"] = torch.tensor(index, dtype=torch.long)
        sample["id"] = self.ids[index]
        return sample


def verify_splits(info: DataInfo, splits: Mapping[str, Dataset], count: int) -> None:
    """Read the first `count` samples of each split (eval transforms) and check their shapes.

    Catches unreadable or wrongly shaped files before any training starts.
    """
    for name, split in splits.items():
        for i in range(min(count, len(split))):  # type: ignore[arg-type]
            sample = split[i]
            for m in info.modalities:
                value = model_input(sample[m])  # the dtype a model gets, after move_batch
                if tuple(value.shape) != info.input_shapes[m] or value.dtype != info.input_dtypes[m]:
                    raise DataFormatError(
                        f"{info.name} {name}: sample {sample.get('id', i)!r} gives {m} of shape "
                        f"{tuple(value.shape)} ({value.dtype}), expected "
                        f"{info.input_shapes[m]} ({info.input_dtypes[m]})")


def assemble(info: DataInfo, train_reader: SampleReader, train_positions: Sequence[int],
             val_reader: SampleReader, val_positions: Sequence[int],
             test_reader: SampleReader, test_positions: Sequence[int], *,
             verify: int, skipped: Mapping[str, Sequence[tuple[str, str]]] | None = None,
             val_list_file: Optional[Path] = None) -> DataModule:
    """The DataModule (+ `train_eval`: the train split with eval transforms) of file splits."""
    skipped = skipped or {}
    train = FileSplit(train_reader, train_positions, "train", True, skipped=skipped.get("train", ()))
    train_eval = FileSplit(train_reader, train_positions, "train", False,
                           skipped=skipped.get("train", ()))
    val = FileSplit(val_reader, val_positions, "val", False, skipped=skipped.get("val", ()))
    val.id_list_path = val_list_file
    test = FileSplit(test_reader, test_positions, "test", False, skipped=skipped.get("test", ()))
    verify_splits(info, {"train": train_eval, "val": val, "test": test}, verify)
    return DataModule(info=info, train=train, val=val, test=test, train_eval=train_eval)


def check_labels_in_range(dataset: str, labels: Iterable[int], num_classes: int, where: str
                          ) -> None:
    for label in labels:
        if not 0 <= label < num_classes:
            raise DataFormatError(f"{dataset}: {where}: label {label} is outside 0..{num_classes - 1}")


def carve_and_assemble(info: DataInfo, split_seed: int, options: CommonOptions,
                       train_reader: SampleReader, test_reader: SampleReader,
                       reports: Mapping[str, SkipReport], layout: str, split_key: Any
                       ) -> DataModule:
    """val = the §0.3 carve-out (or `val_list`) of the usable train samples; then assemble."""
    for split, reader in (("train", train_reader), ("test", test_reader)):
        reports[split].emit(reader.ids)
        if not reader.ids:
            raise no_usable_samples(info.name, split, reports[split], layout)
    directory = split_dir_for(options.split_dir, options.cache_dir, info.name, split_key)
    kept, val, path = carve_validation(info.name, train_reader.ids, train_reader.labels,
                                       split_seed, options.val_list, directory)
    return assemble(info, train_reader, kept, train_reader, val, test_reader,
                    range(len(test_reader.ids)), verify=options.verify_samples,
                    skipped={s: r.skipped for s, r in reports.items()}, val_list_file=path)
