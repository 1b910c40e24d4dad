"""BalancedAV (`balanced_av`, Xia et al. 2023): 30 classes, audio + frames (datasets.md §2.3).

One annotation JSON (`labels` and a `database` of keys with `subset` and `label`), one HDF5
file of JPEG-encoded frames and one pickled spectrogram per key. A `validation` subset is
used as val when the file has one, else the seeded 10% carve-out of `training`. Training
applies the standard train transforms (the public loader never does, by a bug).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from bbench.config.fields import param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataModule
from bbench.data.clips import clip_info
from bbench.data.errors import DataFormatError, malformed, missing
from bbench.data.file_splits import assemble, carve_and_assemble
from bbench.data.index_cache import cached_json, digest, stamp
from bbench.data.options import ClipOptions, data_path, dataset_root, index_cache_dir, pick_option
from bbench.data.pack import Pack, Source, clip_streams, clip_visual, stored_array, with_pack
from bbench.data.reading import decode_image, load_pickle
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities
from bbench.data.skips import SkipReport, no_usable_samples
from bbench.data.transforms import fit_audio, fit_short_side, frame_indices, stack_frames

NAME = "balanced_av"
MODALITIES = ("audio", "visual")
NUM_CLASSES = 30
SUBSETS = {"train": "training", "test": "testing", "val": "validation"}

LAYOUT = """<root>/
  annotations.json     [csv_path]     {"labels": [names…],
                                       "database": {key: {"subset": "training" | "testing"
                                                          | "validation", "label": name}}}
  visual/<key>.hdf5    [visual_path]  dataset "video": one JPEG byte string per frame (vlen uint8)
  audio/<key>.pkl      [audio_path]   pickled float (T, F) ndarray, normalised fbank"""


@dataclass(frozen=True)
class BalancedAVOptions(ClipOptions):
    """BalancedAV options; bracketed BalanceMM keys in LAYOUT are accepted as aliases."""

    frames_per_clip: int = param(3, ge=1)
    audio_frames: int = param(1024, ge=1)
    annotation_file: Optional[str] = None
    visual_dir: Optional[str] = None
    audio_dir: Optional[str] = None
    csv_path: Optional[str] = param(None, doc="BalanceMM alias of annotation_file (it is JSON)")
    visual_path: Optional[str] = param(None, doc="BalanceMM alias of visual_dir")
    audio_path: Optional[str] = param(None, doc="BalanceMM alias of audio_dir")
    trust_pickles: bool = param(False, doc="read the .pkl files with plain pickle (runs code)")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DataFormatError(f"{NAME}: reading the HDF5 frame files needs h5py: "
                              f"pip install h5py") from None
    return h5py


def frame_bytes(element: Any) -> bytes:
    """The JPEG bytes of one `video` element: vlen uint8 array, opaque/void scalar or bytes."""
    if isinstance(element, (bytes, bytearray)):
        return bytes(element)
    if isinstance(element, (np.ndarray, np.void, np.generic)):
        return element.tobytes()
    raise TypeError(f"unsupported frame element of type {type(element).__name__}")


def count_frames(path: Path) -> int:
    """len(video) of one HDF5 file; 0 when the file does not exist."""
    if not path.is_file():
        return 0
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            return int(len(f["video"]))
    except Exception as err:  # noqa: BLE001 - h5py raises OSError/KeyError/TypeError
        raise malformed(NAME, path, f"cannot read the HDF5 dataset 'video' ({err})") from None


@dataclass(frozen=True)
class Record:
    id: str
    label: int
    hdf5: Path
    audio: Path
    frames: int


class BalancedAVReader:
    """Samples of keys: frames decoded from the HDF5 (opened per sample, so fork-safe) or the pack."""

    def __init__(self, records: list[Record], modalities: tuple[str, ...],
                 options: BalancedAVOptions) -> None:
        self.dataset = NAME
        self.records = records
        self.ids = [r.id for r in records]
        self.labels = [r.label for r in records]
        self.modalities = modalities
        self.options = options
        self.pack: Optional[Pack] = None

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]:
        record, opts = self.records[position], self.options
        out: dict[str, torch.Tensor] = {}
        if "audio" in self.modalities:
            array = (self.pack.item(position, "audio", 0) if self.pack is not None
                     else load_pickle(record.audio, opts.trust_pickles, dataset=NAME))
            out["audio"] = fit_audio(array, opts.audio_frames, opts.mel_bins, opts.audio_pad_value,
                                     str(record.audio), NAME, warn)
        if "visual" in self.modalities:
            picks = frame_indices(record.frames, opts.frames_per_clip, rng)
            # uint8: normalised by move_batch after the hand-over
            out["visual"] = clip_visual(self.pack, position, picks, opts.image_size, rng,
                                        lambda: stack_frames(self._frames(record, picks)))
        return out

    def _frames(self, record: Record, picks: list[int]) -> list[torch.Tensor]:
        """Frames `picks` of a key from its HDF5 file, at the stored resolution."""
        h5py = _h5py()
        try:
            with h5py.File(record.hdf5, "r") as f:
                video = f["video"]
                blobs = {k: frame_bytes(video[k]) for k in sorted(set(picks))}
        except FileNotFoundError:
            raise missing(NAME, "frame file", record.hdf5, LAYOUT) from None
        except Exception as err:  # noqa: BLE001
            raise malformed(NAME, record.hdf5, f"cannot read frames {picks} ({err})") from None
        return [fit_short_side(decode_image(blobs[k], f"{record.hdf5}[video][{k}]", "RGB", NAME),
                               self.options.frame_short_side) for k in picks]

    @property
    def pack_streams(self) -> dict[str, str]:
        """The pack's streams of this reader: frames for visual, an array for audio."""
        return clip_streams(self.modalities)

    def pack_sources(self, position: int) -> dict[str, Source]:
        """The HDF5 file (stamped, with its frame count) and the pickled spectrogram (stamped)."""
        record = self.records[position]
        sources = {"visual": Source(record.hdf5.parent, (record.hdf5.name,), record.frames,
                                    stamped=True),
                   "audio": Source(record.audio.parent, (record.audio.name,), 1, stamped=True)}
        return {m: sources[m] for m in self.modalities}

    def pack_content(self, position: int) -> dict[str, list[np.ndarray]]:
        """The stored spectrogram and every frame of the key, decoded as `load` decodes them."""
        record = self.records[position]
        out: dict[str, list[np.ndarray]] = {}
        if "audio" in self.modalities:
            out["audio"] = [stored_array(load_pickle(record.audio, self.options.trust_pickles,
                                                     dataset=NAME), str(record.audio), NAME)]
        if "visual" in self.modalities:
            out["visual"] = [f.numpy() for f in self._frames(record, list(range(record.frames)))]
        return out

    def pack_subset(self, positions: Sequence[int]) -> "BalancedAVReader":
        """A reader of the keys at `positions` only: what one chunk's build job pickles."""
        return BalancedAVReader([self.records[p] for p in positions], self.modalities,
                                self.options)


def read_annotations(path: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    if not path.is_file():
        raise missing(NAME, "annotation file", path, LAYOUT)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        labels, database = list(data["labels"]), dict(data["database"])
    except (ValueError, KeyError, TypeError) as err:
        raise malformed(NAME, path, f"not the expected JSON with 'labels' and 'database' "
                                    f"({type(err).__name__}: {err})") from None
    return [str(x) for x in labels], database


def build_balanced_av(spec: DatasetSpec, options: BalancedAVOptions) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT)
    annotation = data_path(root, pick_option(options, "annotation_file", "csv_path", owner=owner),
                           "annotations.json")
    visual_dir = data_path(root, pick_option(options, "visual_dir", "visual_path", owner=owner),
                           "visual")
    audio_dir = data_path(root, pick_option(options, "audio_dir", "audio_path", owner=owner),
                          "audio")
    if "audio" in modalities and not audio_dir.is_dir():
        raise missing(NAME, "audio folder", audio_dir, LAYOUT)
    if "visual" in modalities and not visual_dir.is_dir():
        raise missing(NAME, "frame folder", visual_dir, LAYOUT)
    classes, database = read_annotations(annotation)
    label_of = {name: k for k, name in enumerate(classes)}
    by_split: dict[str, list[tuple[str, int]]] = {s: [] for s in SUBSETS}
    subset_to_split = {v: k for k, v in SUBSETS.items()}
    for key in sorted(database):
        entry = database[key]
        split = subset_to_split.get(str(entry.get("subset")))
        if split is None:
            continue
        if entry.get("label") not in label_of:
            raise DataFormatError(f"{NAME}: {annotation}: key {key!r} has label "
                                  f"{entry.get('label')!r}, which is not in 'labels'")
        by_split[split].append((key, label_of[entry["label"]]))
    cache = index_cache_dir(options)
    readers: dict[str, BalancedAVReader] = {}
    reports: dict[str, SkipReport] = {}
    for split, listed in by_split.items():
        report = SkipReport(NAME, split, listed=len(listed),
                            expected=frozenset(options.expected_missing))
        counts: dict[str, int] = {}
        if "visual" in modalities:
            keys = [k for k, _ in listed]
            counts = cached_json(cache, f"{NAME}-{split}-frames",
                                 {"root": stamp(visual_dir), "keys": digest(keys, 32)},
                                 lambda keys=keys: {k: count_frames(visual_dir / f"{k}.hdf5")
                                                    for k in keys})
        records = []
        for key, label in listed:
            audio = audio_dir / f"{key}.pkl"
            if "audio" in modalities and not audio.is_file():
                report.skip(key, f"no audio file {audio}")
                continue
            if "visual" in modalities and counts.get(key, 0) < 1:
                report.skip(key, f"no frames in {visual_dir / f'{key}.hdf5'}")
                continue
            records.append(Record(key, label, visual_dir / f"{key}.hdf5", audio, counts.get(key, 0)))
        readers[split] = with_pack(BalancedAVReader(records, modalities, options), root, split)
        reports[split] = report
    info = clip_info(NAME, modalities, len(classes), options)
    if not by_split["val"]:
        reports.pop("val")
        return carve_and_assemble(info, spec.split_seed, options, readers["train"],
                                  readers["test"], reports, LAYOUT,
                                  [str(root.resolve()), str(annotation)])
    for split, report in reports.items():
        report.emit(readers[split].ids)
        if not readers[split].ids:
            raise no_usable_samples(NAME, split, report, LAYOUT)
    return assemble(info, readers["train"], range(len(readers["train"].ids)), readers["val"],
                    range(len(readers["val"].ids)), readers["test"],
                    range(len(readers["test"].ids)), verify=options.verify_samples,
                    skipped={s: r.skipped for s, r in reports.items()})


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_balanced_av, options=BalancedAVOptions, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=NUM_CLASSES,
    description="BalancedAV: audio fbank + 3 frames from HDF5, 30 classes",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"), aliases=("Balance", "BalancedAV"))
