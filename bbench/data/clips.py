"""Audio + frame-folder clips: the storage of CREMA-D, Kinetics-Sounds and VGGSound.

One job: those three datasets store a clip as one spectrogram file plus one folder of frame
images, and differ only in file names and list formats. `build_clip_records` is their §2.0
existence filter (usable clips of a list, skips reported), `FolderClipReader` loads and
transforms one clip, and `clip_info` gives the shapes it produces. A reader decodes from the
image and audio files, or from the clip's packed cache when one is attached (`bbench.data.pack`):
the same decoded arrays either way, then the same transforms.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from bbench.data.base import DataInfo
from bbench.data.index_cache import list_clip_frames
from bbench.data.options import ClipOptions
from bbench.data.pack import Pack, Source, clip_streams, clip_visual, stored_array
from bbench.data.reading import decode_image
from bbench.data.skips import SkipReport
from bbench.data.transforms import fit_audio, fit_short_side, frame_indices, stack_frames


@dataclass(frozen=True)
class ClipRecord:
    id: str
    label: int
    audio: Path
    frames_dir: Path
    frames: tuple[str, ...]


class FolderClipReader:
    """Samples of clips stored as one spectrogram file + one folder of frame images."""

    def __init__(self, dataset: str, records: Sequence[ClipRecord], modalities: Sequence[str],
                 options: ClipOptions, load_audio: Callable[[Path, str], Any]) -> None:
        self.dataset = dataset
        self.records = list(records)
        self.ids = [r.id for r in self.records]
        self.labels = [r.label for r in self.records]
        self.modalities = tuple(modalities)
        self.options = options
        self.load_audio = load_audio
        self.pack: Optional[Pack] = None

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]:
        record = self.records[position]
        opts = self.options
        out: dict[str, torch.Tensor] = {}
        if "audio" in self.modalities:
            array = (self.pack.item(position, "audio", 0) if self.pack is not None
                     else self.load_audio(record.audio, self.dataset))
            out["audio"] = fit_audio(array, opts.audio_frames, opts.mel_bins, opts.audio_pad_value,
                                     str(record.audio), self.dataset, warn)
        if "visual" in self.modalities:
            picks = frame_indices(len(record.frames), opts.frames_per_clip, rng)
            # uint8: normalised by move_batch after the hand-over
            out["visual"] = clip_visual(
                self.pack, position, picks, opts.image_size, rng,
                lambda: stack_frames([self._decode(position, k) for k in picks]))
        return out

    def _decode(self, position: int, k: int) -> torch.Tensor:
        """Frame k of a clip from its image file, at the stored resolution (`frame_short_side`)."""
        record = self.records[position]
        path = record.frames_dir / record.frames[k]
        return fit_short_side(decode_image(path, str(path), "RGB", self.dataset),
                              self.options.frame_short_side)

    @property
    def pack_streams(self) -> dict[str, str]:
        """The pack's streams of this reader: frames for visual, an array for audio."""
        return clip_streams(self.modalities)

    def pack_sources(self, position: int) -> dict[str, Source]:
        """The audio file (stamped) and the frame folder with its frame names."""
        record = self.records[position]
        sources = {"audio": Source(record.audio.parent, (record.audio.name,), 1, stamped=True),
                   "visual": Source(record.frames_dir, record.frames, len(record.frames))}
        return {m: sources[m] for m in self.modalities}

    def pack_content(self, position: int) -> dict[str, list[np.ndarray]]:
        """The stored spectrogram and every frame of the clip, decoded as `load` decodes them."""
        record = self.records[position]
        out: dict[str, list[np.ndarray]] = {}
        if "audio" in self.modalities:
            out["audio"] = [stored_array(self.load_audio(record.audio, self.dataset),
                                         str(record.audio), self.dataset)]
        if "visual" in self.modalities:
            out["visual"] = [self._decode(position, k).numpy() for k in range(len(record.frames))]
        return out

    def pack_subset(self, positions: Sequence[int]) -> "FolderClipReader":
        """A reader of the clips at `positions` only: what one chunk's build job pickles."""
        return FolderClipReader(self.dataset, [self.records[p] for p in positions],
                                self.modalities, self.options, self.load_audio)


def clip_info(name: str, modalities: Sequence[str], num_classes: int, options: ClipOptions
              ) -> DataInfo:
    shapes = {"audio": (1, options.audio_frames, options.mel_bins),
              "visual": (options.frames_per_clip, 3, options.image_size, options.image_size)}
    return DataInfo(name=name, modalities=tuple(modalities), num_classes=num_classes,
                    input_shapes={m: shapes[m] for m in modalities},
                    input_dtypes={m: torch.float32 for m in modalities})


def build_clip_records(dataset: str, split: str, listed: Sequence[tuple[str, int]],
                       audio_for: Callable[[str], Sequence[Path]],
                       frames_root: Path, folder_for: Callable[[str], Sequence[str]],
                       modalities: Sequence[str], cache: Optional[Path],
                       expected_missing: Iterable[str] = ()
                       ) -> tuple[list[ClipRecord], SkipReport]:
    """Usable clips of a list (§2.0 existence filter), in list order, duplicates dropped.

    `audio_for(id)` gives candidate audio files, `folder_for(id)` candidate frame-folder
    names under `frames_root` (VGGSound accepts a padded and an unpadded name); the first
    that exists is used. Skips of `expected_missing` ids are reported as declared (INFO).
    """
    report = SkipReport(dataset, split, listed=len(listed), expected=frozenset(expected_missing))
    seen: set[str] = set()
    unique: list[tuple[str, int]] = []
    for sample_id, label in listed:
        if sample_id in seen:
            report.skip(sample_id, "listed twice")
            continue
        seen.add(sample_id)
        unique.append((sample_id, label))
    need_visual = "visual" in modalities
    listings: dict[str, list[str]] = {}
    if need_visual:
        candidates = [[*folder_for(i)] for i, _ in unique]
        first = list_clip_frames(frames_root, [c[0] for c in candidates], cache,
                                 f"{dataset}-{split}-frames")
        listings.update(first)
        extra = [name for c in candidates if not first.get(c[0]) for name in c[1:]]
        if extra:
            listings.update(list_clip_frames(frames_root, extra, cache,
                                             f"{dataset}-{split}-frames-alt"))
    records: list[ClipRecord] = []
    for sample_id, label in unique:
        audio_path = Path()
        if "audio" in modalities:
            options = list(audio_for(sample_id))
            found = next((p for p in options if p.is_file()), None)
            if found is None:
                report.skip(sample_id, f"no audio file {options[0]}")
                continue
            audio_path = found
        folder, frames = "", ()
        if need_visual:
            names = list(folder_for(sample_id))
            folder = next((n for n in names if listings.get(n)), "")
            if not folder:
                report.skip(sample_id, f"no frames in {frames_root / names[0]}")
                continue
            frames = tuple(listings[folder])
        records.append(ClipRecord(sample_id, label, audio_path, frames_root / folder, frames))
    return records, report
