"""Kinetics-Sounds (`kinetics_sounds`): 31 classes, audio + frames (datasets.md §2.2).

List files are comma-separated (`<name>,10,<label>`, GeWu-Lab) or whitespace-separated
(BalanceMM); the first field is the clip name, the last the integer label. No validation
split is published, so val is the seeded 10% carve-out of train.
"""
from __future__ import annotations

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

NAME = "kinetics_sounds"
MODALITIES = ("audio", "visual")
NUM_CLASSES = 31

LAYOUT = """<root>/
  train.txt (or my_train.txt)   [csv_path_train]    "<name>,10,<label>" or "<name> <label>" per line
  test.txt  (or my_test.txt)    [csv_path_test]
  train/audio/<name>.npy        [audio_path_train]  float32 (1024, 128) normalised fbank
  train/visual/<name>/*.jpg     [visual_path_train] 1-fps frames
  test/audio/<name>.npy         [audio_path_test]
  test/visual/<name>/*.jpg      [visual_path_test]"""


@dataclass(frozen=True)
class KineticsSoundsOptions(ClipOptions):
    """Kinetics-Sounds options; bracketed BalanceMM keys in LAYOUT are accepted as aliases."""

    frames_per_clip: int = param(3, ge=1)
    audio_frames: int = param(1024, ge=1)
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    train_audio_dir: Optional[str] = None
    train_visual_dir: Optional[str] = None
    test_audio_dir: Optional[str] = None
    test_visual_dir: Optional[str] = None
    csv_path_train: Optional[str] = param(None, doc="BalanceMM alias of train_list")
    csv_path_test: Optional[str] = param(None, doc="BalanceMM alias of test_list")
    audio_path_train: Optional[str] = param(None, doc="BalanceMM alias of train_audio_dir")
    visual_path_train: Optional[str] = param(None, doc="BalanceMM alias of train_visual_dir")
    audio_path_test: Optional[str] = param(None, doc="BalanceMM alias of test_audio_dir")
    visual_path_test: Optional[str] = param(None, doc="BalanceMM alias of test_visual_dir")


def read_list(path: Path, num_classes: int = NUM_CLASSES) -> list[tuple[str, int]]:
    """(name, label) of each line: split on commas or whitespace; labels ≥ K are an error."""
    rows: list[tuple[str, int]] = []
    for n, line in enumerate(read_text_lines(path, NAME, "list file", LAYOUT), start=1):
        fields = [f.strip() for f in (line.split(",") if "," in line else line.split())]
        fields = [f for f in fields if f]
        try:
            label = int(fields[-1])
            if len(fields) < 2:
                raise ValueError
        except ValueError:
            if n == 1 and len(rows) == 0:  # a header row
                continue
            raise DataFormatError(f"{NAME}: {path}, line {n}: {line!r} is not "
                                  f"'<name>,<...>,<label>' or '<name> <label>'") from None
        if not 0 <= label < num_classes:
            raise DataFormatError(f"{NAME}: {path}, line {n}: label {label} is outside "
                                  f"0..{num_classes - 1} ({line!r})")
        rows.append((fields[0], label))
    return rows


def _list_file(root: Path, given: Optional[str], split: str) -> Path:
    if given:
        return data_path(root, given, "")
    for name in (f"{split}.txt", f"my_{split}.txt"):
        if (root / name).is_file():
            return root / name
    raise missing(NAME, f"{split} list file", root / f"{split}.txt (or my_{split}.txt)", LAYOUT)


def build_kinetics_sounds(spec: DatasetSpec, options: KineticsSoundsOptions) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT)
    cache = index_cache_dir(options)
    readers, reports, lists = {}, {}, {}
    for split in ("train", "test"):
        lists[split] = _list_file(root, pick_option(options, f"{split}_list", f"csv_path_{split}",
                                                    owner=owner), split)
        audio_dir = data_path(root, pick_option(options, f"{split}_audio_dir",
                                                f"audio_path_{split}", owner=owner),
                              f"{split}/audio")
        visual_dir = data_path(root, pick_option(options, f"{split}_visual_dir",
                                                 f"visual_path_{split}", owner=owner),
                               f"{split}/visual")
        if "audio" in modalities and not audio_dir.is_dir():
            raise missing(NAME, f"{split} audio folder", audio_dir, LAYOUT)
        if "visual" in modalities and not visual_dir.is_dir():
            raise missing(NAME, f"{split} frame folder", visual_dir, LAYOUT)
        records, reports[split] = build_clip_records(
            NAME, split, read_list(lists[split]),
            lambda i, d=audio_dir: [d / f"{i}.npy"], visual_dir, lambda i: [i], modalities,
            cache, options.expected_missing)
        readers[split] = with_pack(FolderClipReader(NAME, records, modalities, options,
                                                    load_numpy), root, split)
    info = clip_info(NAME, modalities, NUM_CLASSES, options)
    return carve_and_assemble(info, spec.split_seed, options, readers["train"], readers["test"],
                              reports, LAYOUT, [str(root.resolve()), str(lists["train"])])


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_kinetics_sounds, options=KineticsSoundsOptions, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=NUM_CLASSES,
    description="Kinetics-Sounds: audio fbank + 3 video frames, 31 classes (BalanceMM layout)",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"), aliases=("KineticsSounds", "KS"))
