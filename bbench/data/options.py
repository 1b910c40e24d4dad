"""The options the paper-dataset loaders share, and how path and alias options resolve to paths.

One job: `CommonOptions` (every paper loader) and `ClipOptions` (the spectrogram + frames
datasets) declare the typed, ranged `dataset.options` fields once; `pick_option`,
`dataset_root` and `data_path` resolve them -- including the BalanceMM-style aliases -- to the
data root and the files under it, failing early with the expected layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from bbench.config.fields import SpecError, param
from bbench.data.errors import missing, prepare_hint
from bbench.data.index_cache import cache_root

AUDIO_PAD_VALUE = 0.438012
"""The normalised value of a zero filter-bank frame: what the §3.2 recipe itself pads with."""


def pick_option(options: Any, name: str, *aliases: str, owner: str) -> Any:
    """The value of option `name` or of one of its BalanceMM-style aliases (at most one set)."""
    given = [(key, getattr(options, key)) for key in (name, *aliases)
             if getattr(options, key) is not None]
    distinct = {str(value).rstrip("/\\") if isinstance(value, str) else repr(value)
                for _, value in given}
    if len(distinct) > 1:
        shown = ", ".join(f"{key}={value!r}" for key, value in given)
        raise SpecError(f"{owner}: {shown} set the same thing to different values; give one")
    return given[0][1] if given else None


def dataset_root(dataset: str, root: Optional[str], layout: str, *alias_values: Optional[str]
                 ) -> Path:
    """The data root: `dataset.root`, or a root-valued alias option (FOOD-101 `targ_dir`, …)."""
    candidates = [v for v in (root, *alias_values) if v]
    if len({str(Path(os.path.expanduser(v))) for v in candidates}) > 1:
        raise SpecError(f"dataset {dataset}: the data root is given twice with different values "
                        f"({', '.join(map(repr, candidates))}); give one")
    if not candidates:
        raise SpecError(f"dataset {dataset}: no data root given; pass dataset.root=DIR "
                        f"(CLI: --set data_root=DIR)\nexpected layout:\n{layout}\n"
                        f"{prepare_hint(dataset)}")
    path = Path(os.path.expanduser(candidates[0]))
    if not path.is_dir():
        raise missing(dataset, "data root", path, layout)
    return path


def data_path(root: Path, value: Optional[str], default: str) -> Path:
    """A path option: absolute as given, relative to the data root otherwise (trailing '/' ok)."""
    if value is None or value == "":
        return root / default
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else root / path


@dataclass(frozen=True)
class CommonOptions:
    """Options every paper-dataset loader has (`spec.options`)."""

    image_size: int = param(224, ge=8, doc="frames/images are resized to image_size × image_size")
    val_list: Optional[str] = param(None, doc="file of train sample ids to use as val (one per "
                                              "line) instead of the seeded 10% carve-out")
    split_dir: Optional[str] = param(None, doc="where carved val id lists are written and reused "
                                               "(default: <cache_dir>/splits/…)")
    cache_dir: Optional[str] = param(None, doc="bbench cache folder (default $BBENCH_CACHE_DIR or "
                                               "~/.cache/bbench); never inside the data")
    index_cache: bool = param(True, doc="cache frame listings of the data folders")
    verify_samples: int = param(1, ge=0, doc="samples per split read at start-up to check formats")
    expected_missing: tuple[str, ...] = param(
        (), doc="ids of listed samples known to be unusable, e.g. the public CREMA-D's broken "
                "clips; they are skipped and reported at info level as expected, not warned about")
    frame_short_side: Optional[int] = param(
        None, ge=8, doc="resize every decoded frame/image so its shorter side is this many pixels "
                        "(aspect kept) before any transform; None: as stored. The stored "
                        "resolution of a packed cache (`bbench prepare DATASET --pack`)")
    pack: Literal["auto", "require", "off"] = param(
        "auto", doc="the packed frame cache under <root>/.bbench_pack: auto = read it when one "
                    "was built for these options, require = fail when there is none, off = "
                    "always decode the image files")
    pack_verify: bool = param(False, doc="check the sha256 of every pack file when the pack is "
                                         "opened (reads the whole pack once)")


@dataclass(frozen=True)
class ClipOptions(CommonOptions):
    """Options of the spectrogram + frames datasets (CREMA-D, KS, BalancedAV, VGGSound)."""

    frames_per_clip: int = param(3, ge=1, doc="T, frames per clip (CREMA-D: 2)")
    audio_frames: int = param(1024, ge=1, doc="spectrogram frames; other lengths are cropped/padded")
    mel_bins: int = param(128, ge=1, doc="mel bins of the stored spectrograms")
    audio_pad_value: float = param(AUDIO_PAD_VALUE, doc="value padded audio frames get")


def index_cache_dir(options: CommonOptions) -> Optional[Path]:
    return cache_root(options.cache_dir) if options.index_cache else None
