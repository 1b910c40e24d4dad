"""VGGSound (`vggsound`): 309 classes, audio + frames (datasets.md §2.4).

The official `vggsound.csv` (no header: YouTube id, start second, label, split) is parsed
with a real CSV reader: labels contain quoted commas and the word "train". Class index =
position in the sorted distinct labels of the whole CSV, so it does not depend on which
clips were downloaded. Val is the seeded 10% carve-out of the usable train clips.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bbench.config.fields import param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataModule
from bbench.data.clips import FolderClipReader, build_clip_records, clip_info
from bbench.data.errors import DataFormatError, missing
from bbench.data.file_splits import carve_and_assemble
from bbench.data.options import ClipOptions, data_path, dataset_root, index_cache_dir, pick_option
from bbench.data.pack import with_pack
from bbench.data.reading import load_numpy, read_text_lines
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities

log = logging.getLogger("bbench")

NAME = "vggsound"
MODALITIES = ("audio", "visual")
NUM_CLASSES = 309

LAYOUT = """<root>/
  vggsound.csv                       [csv_root]          "<ytid>,<start>,<label>,<train|test>" (no header)
  video/train/<ytid>_<start>/*.jpg   [video_train_root]  1-fps frames (00000.jpg, 00025.jpg, … ok)
  video/test/<ytid>_<start>/*.jpg    [video_test_root]
  audio/train/<ytid>_<start>.npy     [audio_train_root]  float32 (1024, 128) normalised fbank
  audio/test/<ytid>_<start>.npy      [audio_test_root]
  (<ytid>_<start:06d> names are accepted too)"""


@dataclass(frozen=True)
class VGGSoundOptions(ClipOptions):
    """VGGSound options; bracketed BalanceMM keys in LAYOUT are accepted as aliases."""

    frames_per_clip: int = param(3, ge=1)
    audio_frames: int = param(1024, ge=1)
    csv_file: Optional[str] = None
    train_visual_dir: Optional[str] = None
    test_visual_dir: Optional[str] = None
    train_audio_dir: Optional[str] = None
    test_audio_dir: Optional[str] = None
    csv_root: Optional[str] = param(None, doc="BalanceMM alias of csv_file")
    video_train_root: Optional[str] = param(None, doc="BalanceMM alias of train_visual_dir")
    video_test_root: Optional[str] = param(None, doc="BalanceMM alias of test_visual_dir")
    audio_train_root: Optional[str] = param(None, doc="BalanceMM alias of train_audio_dir")
    audio_test_root: Optional[str] = param(None, doc="BalanceMM alias of test_audio_dir")


@dataclass(frozen=True)
class CsvRow:
    ytid: str
    start: str
    label: str
    split: str

    @property
    def key(self) -> str:
        return f"{self.ytid}_{self.start}"

    def keys(self) -> list[str]:
        """The CSV's unpadded key, then the 6-digit padded form used by common mirrors."""
        names = [self.key]
        if self.start.isdigit():
            padded = f"{self.ytid}_{int(self.start):06d}"
            if padded != self.key:
                names.append(padded)
        return names


def read_csv(path: Path) -> list[CsvRow]:
    """Rows whose split field is `train` or `test` (others, e.g. an added header, ignored)."""
    rows: list[CsvRow] = []
    for n, fields in enumerate(csv.reader(read_text_lines(path, NAME, "CSV", LAYOUT)), start=1):
        fields = [f.strip() for f in fields]
        if len(fields) != 4:
            raise DataFormatError(f"{NAME}: {path}, row {n}: expected 4 fields (YouTube id, start, "
                                  f"label, split), got {len(fields)}: {fields!r}")
        if fields[3] in ("train", "test"):
            rows.append(CsvRow(*fields))
    return rows


def class_names(rows: list[CsvRow]) -> list[str]:
    names = sorted({r.label for r in rows})
    if len(names) != NUM_CLASSES:
        log.warning("%s: the CSV has %d distinct labels, the official file has %d", NAME,
                    len(names), NUM_CLASSES)
    return names


def build_vggsound(spec: DatasetSpec, options: VGGSoundOptions) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT)
    csv_path = data_path(root, pick_option(options, "csv_file", "csv_root", owner=owner),
                         "vggsound.csv")
    if csv_path.is_dir():  # BalanceMM's csv_root may name the folder
        csv_path = csv_path / "vggsound.csv"
    rows = read_csv(csv_path)
    if not rows:
        raise DataFormatError(f"{NAME}: {csv_path} has no rows with split 'train' or 'test'")
    classes = class_names(rows)
    label_of = {name: k for k, name in enumerate(classes)}
    cache = index_cache_dir(options)
    readers, reports = {}, {}
    for split in ("train", "test"):
        visual_dir = data_path(root, pick_option(options, f"{split}_visual_dir",
                                                 f"video_{split}_root", owner=owner),
                               f"video/{split}")
        audio_dir = data_path(root, pick_option(options, f"{split}_audio_dir",
                                                f"audio_{split}_root", owner=owner),
                              f"audio/{split}")
        if "audio" in modalities and not audio_dir.is_dir():
            raise missing(NAME, f"{split} audio folder", audio_dir, LAYOUT)
        if "visual" in modalities and not visual_dir.is_dir():
            raise missing(NAME, f"{split} frame folder", visual_dir, LAYOUT)
        split_rows = [r for r in rows if r.split == split]
        alternatives = {r.key: r.keys() for r in split_rows}
        records, reports[split] = build_clip_records(
            NAME, split, [(r.key, label_of[r.label]) for r in split_rows],
            lambda i, d=audio_dir, a=alternatives: [d / f"{k}.npy" for k in a[i]], visual_dir,
            lambda i, a=alternatives: a[i], modalities, cache, options.expected_missing)
        readers[split] = with_pack(FolderClipReader(NAME, records, modalities, options,
                                                    load_numpy), root, split)
    info = clip_info(NAME, modalities, len(classes), options)
    return carve_and_assemble(info, spec.split_seed, options, readers["train"], readers["test"],
                              reports, LAYOUT, [str(root.resolve()), str(csv_path)])


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_vggsound, options=VGGSoundOptions, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=NUM_CLASSES,
    description="VGGSound: audio fbank + 3 video frames, 309 classes (official CSV)",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"),
    aliases=("VGG",))  # "VGGSound" matches case-insensitively
