"""CREMA-D (`cremad`): 6 emotions, audio spectrogram + video frames (datasets.md §2.1).

Reads the BalanceMM / OGM-GE layout unchanged: `train.csv` / `test.csv` lists of
`<clip>,<EMO>`, one torch-saved filter bank per clip and one folder of 1-fps frames per clip.
The public list has no validation split, so val is the seeded 10% carve-out of train.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from bbench.config.fields import param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataModule
from bbench.data.clips import FolderClipReader, build_clip_records, clip_info
from bbench.data.errors import missing
from bbench.data.file_splits import carve_and_assemble
from bbench.data.options import ClipOptions, data_path, dataset_root, index_cache_dir, pick_option
from bbench.data.pack import with_pack
from bbench.data.reading import load_torch_tensor, read_text_lines
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities

log = logging.getLogger("bbench")

NAME = "cremad"
MODALITIES = ("audio", "visual")
EMOTIONS: dict[str, int] = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
"""Label of each emotion code, fixed as in every public loader."""

LAYOUT = """<root>/
  train.csv                 [train_txt]   "<clip>,<EMO>" per line, EMO in NEU HAP SAD FEA DIS ANG
  test.csv                  [test_txt]
  audio/<clip>.pt           [audio_path]  torch-saved float32 (T, 128) normalised fbank
  visual/<clip>/*.jpg       [visual_path] 1-fps frames (frame_00001.jpg, …)"""


@dataclass(frozen=True)
class CremadOptions(ClipOptions):
    """CREMA-D options; bracketed BalanceMM keys in LAYOUT are accepted as aliases."""

    frames_per_clip: int = param(2, ge=1, doc="T frames per clip (BalanceMM `fps`)")
    audio_frames: int = param(300, ge=1, doc="filter-bank frames per clip (bbench recipe: 300)")
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    audio_dir: Optional[str] = None
    visual_dir: Optional[str] = None
    train_txt: Optional[str] = param(None, doc="BalanceMM alias of train_list")
    test_txt: Optional[str] = param(None, doc="BalanceMM alias of test_list")
    audio_path: Optional[str] = param(None, doc="BalanceMM alias of audio_dir")
    visual_path: Optional[str] = param(None, doc="BalanceMM alias of visual_dir")
    stat_path: Optional[str] = param(None, doc="BalanceMM class list; accepted, not needed")
    fps: Optional[int] = param(None, ge=1, doc="BalanceMM alias of frames_per_clip")


def read_list(path: Path) -> list[tuple[str, int]]:
    """(clip, label) rows of a CREMA-D list; rows with an unknown emotion code are ignored.

    Handles CRLF, a UTF-8 BOM and a header row (its code is not one of the six).
    """
    rows: list[tuple[str, int]] = []
    ignored: list[str] = []
    for n, fields in enumerate(csv.reader(read_text_lines(path, NAME, "list file", LAYOUT))):
        fields = [f.strip() for f in fields]
        if len(fields) >= 2 and fields[0] and fields[1].upper() in EMOTIONS:
            rows.append((fields[0], EMOTIONS[fields[1].upper()]))
        elif n > 0:
            ignored.append(",".join(fields))
    if ignored:
        log.warning("%s: %s: ignored %d rows without one of the codes %s (first: %r)", NAME, path,
                    len(ignored), "/".join(EMOTIONS), ignored[0])
    return rows


def build_cremad(spec: DatasetSpec, options: CremadOptions) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT)
    if options.fps is not None:  # the BalanceMM name wins when given: it comes from a pasted config
        options = replace(options, frames_per_clip=options.fps)
    lists = {"train": data_path(root, pick_option(options, "train_list", "train_txt", owner=owner),
                                "train.csv"),
             "test": data_path(root, pick_option(options, "test_list", "test_txt", owner=owner),
                               "test.csv")}
    audio_dir = data_path(root, pick_option(options, "audio_dir", "audio_path", owner=owner), "audio")
    visual_dir = data_path(root, pick_option(options, "visual_dir", "visual_path", owner=owner),
                           "visual")
    if "audio" in modalities and not audio_dir.is_dir():
        raise missing(NAME, "audio folder", audio_dir, LAYOUT)
    if "visual" in modalities and not visual_dir.is_dir():
        raise missing(NAME, "frame folder", visual_dir, LAYOUT)
    cache = index_cache_dir(options)
    readers, reports = {}, {}
    for split, list_path in lists.items():
        records, reports[split] = build_clip_records(
            NAME, split, read_list(list_path), lambda i: [audio_dir / f"{i}.pt"], visual_dir,
            lambda i: [i], modalities, cache, options.expected_missing)
        readers[split] = with_pack(FolderClipReader(NAME, records, modalities, options,
                                                    load_torch_tensor), root, split)
    info = clip_info(NAME, modalities, len(EMOTIONS), options)
    return carve_and_assemble(info, spec.split_seed, options, readers["train"], readers["test"],
                              reports, LAYOUT, [str(root.resolve()), str(lists["train"])])


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_cremad, options=CremadOptions, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=len(EMOTIONS),
    description="CREMA-D emotions: audio fbank + 2 video frames (BalanceMM layout)",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"),
    aliases=("CREMA-D",))  # "CREMAD" matches case-insensitively
