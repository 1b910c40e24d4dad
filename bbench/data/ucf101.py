"""UCF-101 (`ucf101`): 101 actions, TV-L1 optical flow + RGB frames (datasets.md §2.5).

Official split 1 by default. The class of a list line is its folder part looked up in
`classInd.txt` (label = index − 1), because file names may differ in case from the folder
(`HandstandPushups/v_HandStandPushups_…`). Train transforms: resize + one horizontal flip
per sample, shared by RGB and flow (flipping flow mirrors both planes and negates u). Flow
pixels p are scaled to [−1, 1] as (p/255 − 0.5)/0.5, so 128 ≈ no motion ≈ 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from bbench.config.fields import param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataInfo, DataModule
from bbench.data.errors import DataFormatError, missing
from bbench.data.file_splits import carve_and_assemble
from bbench.data.index_cache import list_clip_frames
from bbench.data.options import CommonOptions, data_path, dataset_root, index_cache_dir, pick_option
from bbench.data.pack import FRAMES, Pack, Source, with_pack
from bbench.data.reading import decode_image, read_text_lines
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities
from bbench.data.skips import SkipReport
from bbench.data.transforms import (fit_short_side, frame_indices, resize_exact,
                                    stack_frames)

NAME = "ucf101"
MODALITIES = ("flow", "visual")
NUM_CLASSES = 101

LAYOUT = """<root>/
  ucfTrainTestlist/classInd.txt      [stat_path]   "1 ApplyEyeMakeup" … "101 YoYo"
  ucfTrainTestlist/trainlist01.txt   [train_txt]   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
  ucfTrainTestlist/testlist01.txt    [test_txt]    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
  rgb/v_<…>/frame_00001.jpg …        [visual_path] RGB frames
  flow/u/v_<…>/frame000001.jpg …     [flow_path_u] TV-L1 horizontal flow, 8-bit gray
  flow/v/v_<…>/frame000001.jpg …     [flow_path_v] TV-L1 vertical flow, 8-bit gray"""


@dataclass(frozen=True)
class UCF101Options(CommonOptions):
    """UCF-101 options; bracketed BalanceMM keys in LAYOUT are accepted as aliases."""

    frames_per_clip: int = param(3, ge=1, doc="RGB frames per clip")
    flow_frames: int = param(3, ge=1, doc="flow frames (u, v pairs) per clip")
    split: int = param(1, ge=1, le=3, doc="official train/test split")
    class_index: Optional[str] = None
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    rgb_dir: Optional[str] = None
    flow_u_dir: Optional[str] = None
    flow_v_dir: Optional[str] = None
    stat_path: Optional[str] = param(None, doc="BalanceMM alias of class_index")
    train_txt: Optional[str] = param(None, doc="BalanceMM alias of train_list")
    test_txt: Optional[str] = param(None, doc="BalanceMM alias of test_list")
    visual_path: Optional[str] = param(None, doc="BalanceMM alias of rgb_dir")
    flow_path_u: Optional[str] = param(None, doc="BalanceMM alias of flow_u_dir")
    flow_path_v: Optional[str] = param(None, doc="BalanceMM alias of flow_v_dir")


def read_class_index(path: Path) -> dict[str, int]:
    """Class name → label (classInd index − 1)."""
    classes: dict[str, int] = {}
    for n, line in enumerate(read_text_lines(path, NAME, "class index", LAYOUT), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise DataFormatError(f"{NAME}: {path}, line {n}: expected '<index> <ClassName>', "
                                  f"got {line!r}")
        classes[fields[1]] = int(fields[0]) - 1
    if sorted(classes.values()) != list(range(len(classes))):
        raise DataFormatError(f"{NAME}: {path}: class indices must run 1..{len(classes)}")
    return classes


def read_list(path: Path, classes: dict[str, int]) -> list[tuple[str, int]]:
    """(clip name, label) of `<Class>/<v_clip>.avi [label]` lines; class from the folder part."""
    folded = {name.lower(): label for name, label in classes.items()}
    rows: list[tuple[str, int]] = []
    for n, line in enumerate(read_text_lines(path, NAME, "list file", LAYOUT), start=1):
        entry = line.split()[0].replace("\\", "/")
        if "/" not in entry:
            raise DataFormatError(f"{NAME}: {path}, line {n}: expected '<Class>/<clip>.avi', "
                                  f"got {line!r}")
        folder, file_name = entry.split("/")[-2:]
        label = classes.get(folder, folded.get(folder.lower()))
        if label is None:
            raise DataFormatError(f"{NAME}: {path}, line {n}: class {folder!r} is not in the "
                                  f"class index")
        rows.append((Path(file_name).stem, label))
    return rows


def flow_transform(u: torch.Tensor, v: torch.Tensor, size: int, flip: bool) -> torch.Tensor:
    """uint8 (T, 2, size, size) from uint8 (T, 1, H, W) u and v planes (`move_batch` maps
    them to [−1, 1] after the hand-over).

    A flip mirrors both planes and negates u (p → 255 − p): horizontal motion changes sign.
    """
    flow = resize_exact(torch.cat([u, v], dim=1), size)
    if flip:
        flow = flow.flip(-1)
        flow[:, 0] = 255 - flow[:, 0]
    return flow


@dataclass(frozen=True)
class Clip:
    id: str
    label: int
    rgb_dir: Path
    rgb: tuple[str, ...]
    u_dir: Path
    v_dir: Path
    u: tuple[str, ...]
    v: tuple[str, ...]


class UCF101Reader:
    """Samples of UCF-101 clips: RGB frames and u/v flow planes, from JPEG files or the pack."""

    STREAMS = {"visual": ("rgb",), "flow": ("u", "v")}
    """The pack streams of each modality: one per frame folder."""

    def __init__(self, clips: list[Clip], modalities: tuple[str, ...],
                 options: UCF101Options) -> None:
        self.dataset = NAME
        self.clips = clips
        self.ids = [c.id for c in clips]
        self.labels = [c.label for c in clips]
        self.modalities = modalities
        self.options = options
        self.pack: Optional[Pack] = None

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]:
        clip, opts = self.clips[position], self.options
        out: dict[str, torch.Tensor] = {}
        rgb_picks = (frame_indices(len(clip.rgb), opts.frames_per_clip, rng)
                     if "visual" in self.modalities else [])
        n_flow = min(len(clip.u), len(clip.v))
        flow_picks = (frame_indices(n_flow, opts.flow_frames, rng)
                      if "flow" in self.modalities else [])
        flip = bool(rng.random() < 0.5) if rng is not None else False
        if "flow" in self.modalities:
            u = self._frames(position, "u", flow_picks)
            v = self._frames(position, "v", flow_picks)
            if u.shape[-2:] != v.shape[-2:]:
                v = TF.resize(v, list(u.shape[-2:]), antialias=True)
            out["flow"] = flow_transform(u, v, opts.image_size, flip)
        if "visual" in self.modalities:
            frames = self._frames(position, "rgb", rgb_picks)
            frames = resize_exact(frames, opts.image_size)
            out["visual"] = frames.flip(-1) if flip else frames  # uint8, as flow
        return out

    def _folder(self, position: int, stream: str) -> tuple[Path, tuple[str, ...]]:
        """The frame folder of one stream (rgb, u or v) of a clip and its frame names."""
        clip = self.clips[position]
        if stream == "rgb":
            return clip.rgb_dir, clip.rgb
        return (clip.u_dir, clip.u) if stream == "u" else (clip.v_dir, clip.v)

    def _file(self, position: int, stream: str, k: int) -> Path:
        """Frame k's file of one stream of a clip (one Path, not the whole clip's)."""
        folder, names = self._folder(position, stream)
        return folder / names[k]

    def _frames(self, position: int, stream: str, picks: Sequence[int]) -> torch.Tensor:
        """Frames `picks` of a stream as (T, C, H, W), from the pack when one is attached."""
        if self.pack is not None:
            return self.pack.frames(position, stream, picks)
        return stack_frames([self._decode(position, stream, k) for k in picks])

    def _decode(self, position: int, stream: str, k: int) -> torch.Tensor:
        """Frame k of a stream from its JPEG file, at the stored resolution (`frame_short_side`)."""
        path = self._file(position, stream, k)
        return fit_short_side(decode_image(path, str(path), "RGB" if stream == "rgb" else "L",
                                           NAME), self.options.frame_short_side)

    @property
    def pack_streams(self) -> dict[str, str]:
        """The pack's streams of this reader: one frame stream per frame folder."""
        return {s: FRAMES for m in self.modalities for s in self.STREAMS[m]}

    def pack_sources(self, position: int) -> dict[str, Source]:
        """Each stream's frame folder and its frame names."""
        folders = {s: self._folder(position, s) for s in self.pack_streams}
        return {s: Source(folder, names, len(names)) for s, (folder, names) in folders.items()}

    def pack_content(self, position: int) -> dict[str, list[np.ndarray]]:
        """Every frame of every stream of the clip, decoded as `load` decodes them."""
        return {s: [self._decode(position, s, k).numpy()
                    for k in range(len(self._folder(position, s)[1]))] for s in self.pack_streams}

    def pack_subset(self, positions: Sequence[int]) -> "UCF101Reader":
        """A reader of the clips at `positions` only: what one chunk's build job pickles."""
        return UCF101Reader([self.clips[p] for p in positions], self.modalities, self.options)


def build_ucf101(spec: DatasetSpec, options: UCF101Options) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT)
    lists_dir = "ucfTrainTestlist"
    class_path = data_path(root, pick_option(options, "class_index", "stat_path", owner=owner),
                           f"{lists_dir}/classInd.txt")
    lists = {"train": data_path(root, pick_option(options, "train_list", "train_txt", owner=owner),
                                f"{lists_dir}/trainlist{options.split:02d}.txt"),
             "test": data_path(root, pick_option(options, "test_list", "test_txt", owner=owner),
                               f"{lists_dir}/testlist{options.split:02d}.txt")}
    rgb_dir = data_path(root, pick_option(options, "rgb_dir", "visual_path", owner=owner), "rgb")
    u_dir = data_path(root, pick_option(options, "flow_u_dir", "flow_path_u", owner=owner), "flow/u")
    v_dir = data_path(root, pick_option(options, "flow_v_dir", "flow_path_v", owner=owner), "flow/v")
    folders = {"visual": [("RGB frame folder", rgb_dir)],
               "flow": [("flow u folder", u_dir), ("flow v folder", v_dir)]}
    for m in modalities:
        for what, folder in folders[m]:
            if not folder.is_dir():
                raise missing(NAME, what, folder, LAYOUT)
    classes = read_class_index(class_path)
    cache = index_cache_dir(options)
    readers, reports = {}, {}
    for split, list_path in lists.items():
        listed = read_list(list_path, classes)
        report = SkipReport(NAME, split, listed=len(listed),
                            expected=frozenset(options.expected_missing))
        seen: set[str] = set()
        unique = []
        for clip_id, label in listed:
            if clip_id in seen:
                report.skip(clip_id, "listed twice")
            else:
                seen.add(clip_id)
                unique.append((clip_id, label))
        names = [c for c, _ in unique]
        listing = {m: {} for m in ("rgb", "u", "v")}
        if "visual" in modalities:
            listing["rgb"] = list_clip_frames(rgb_dir, names, cache, f"{NAME}-{split}-rgb")
        if "flow" in modalities:
            listing["u"] = list_clip_frames(u_dir, names, cache, f"{NAME}-{split}-flow-u")
            listing["v"] = list_clip_frames(v_dir, names, cache, f"{NAME}-{split}-flow-v")
        clips = []
        for clip_id, label in unique:
            rgb = tuple(listing["rgb"].get(clip_id, ()))
            u, v = tuple(listing["u"].get(clip_id, ())), tuple(listing["v"].get(clip_id, ()))
            if "visual" in modalities and not rgb:
                report.skip(clip_id, f"no frames in {rgb_dir / clip_id}")
            elif "flow" in modalities and not min(len(u), len(v)):
                report.skip(clip_id, f"no flow frames in {u_dir / clip_id} and {v_dir / clip_id}")
            else:
                clips.append(Clip(clip_id, label, rgb_dir / clip_id, rgb, u_dir / clip_id,
                                  v_dir / clip_id, u, v))
        readers[split] = with_pack(UCF101Reader(clips, modalities, options), root, split)
        reports[split] = report
    size = options.image_size
    shapes = {"flow": (options.flow_frames, 2, size, size),
              "visual": (options.frames_per_clip, 3, size, size)}
    info = DataInfo(name=NAME, modalities=modalities, num_classes=len(classes),
                    input_shapes={m: shapes[m] for m in modalities},
                    input_dtypes={m: torch.float32 for m in modalities})
    return carve_and_assemble(info, spec.split_seed, options, readers["train"], readers["test"],
                              reports, LAYOUT, [str(root.resolve()), str(lists["train"])])


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_ucf101, options=UCF101Options, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=NUM_CLASSES,
    description="UCF-101 split 1: TV-L1 flow + RGB frames, 101 actions",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"),
    aliases=("UCF-101",))  # "UCF101" matches case-insensitively
