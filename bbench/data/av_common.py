"""Machinery shared by the seven paper-dataset loaders (datasets.md §0.3 and §2.0).

Why one module: the audio–visual and video formats differ only in where files live and how
list files look. Everything a sample goes through afterwards -- natural-sort frame listing,
the §2.0 frame-selection rule, one crop/flip per clip, deterministic eval transforms,
audio crop/pad, the restricted unpickler, the seeded carve-out, the index cache and the
error messages that say how to produce missing data -- is written once, here.

Training randomness of a sample comes from `numpy.random.default_rng([seed, epoch, index])`
(§0.3), so a sample is a pure function of (run seed, epoch, position in the split) and does
not depend on `num_workers` or on which samples were read before it.
"""
from __future__ import annotations

import builtins
import codecs
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from bbench.config.fields import SpecError, param
from bbench.data.base import DataInfo, DataModule
from bbench.data.splits import (VAL_FRACTION, read_id_list, stratified_carve_out, val_list_path,
                                write_id_list)

log = logging.getLogger("bbench")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
AUDIO_PAD_VALUE = 0.438012
"""The normalised value of a zero filter-bank frame: what the §3.2 recipe itself pads with."""
INDEX_VERSION = 1
"""Bumped whenever the layout of cached index files changes."""
CACHE_ENV = "BBENCH_CACHE_DIR"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class DataFormatError(ValueError):
    """Data is missing or malformed; the message names the file, the layout and the fix."""


class MissingDataError(DataFormatError, FileNotFoundError):
    """An expected file or folder does not exist."""


class UnsafePickleError(DataFormatError, pickle.UnpicklingError):
    """A pickle refers to a global outside the restricted unpickler's allow-list."""


def prepare_hint(dataset: str) -> str:
    return (f"produce it with `python -m bbench prepare {dataset} --raw DIR --out DIR`, or point "
            f"dataset.root (and the path options) at data prepared for BalanceMM; the expected "
            f"layout is in docs/datasets.md")


def missing(dataset: str, what: str, path: Path | str, layout: str) -> MissingDataError:
    """The error for a missing list file, folder or data file, with the layout and the fix."""
    return MissingDataError(f"{dataset}: {what} not found: {path}\nexpected layout:\n{layout}\n"
                            f"{prepare_hint(dataset)}")


def malformed(dataset: str, path: Path | str, problem: str) -> DataFormatError:
    return DataFormatError(f"{dataset}: {path}: {problem}; {prepare_hint(dataset)}")


# ---------------------------------------------------------------------------------------------
# Paths, option aliases, cache directory
# ---------------------------------------------------------------------------------------------

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


def cache_root(option: Optional[str]) -> Path:
    """bbench's cache folder: the option, else $BBENCH_CACHE_DIR, else $XDG_CACHE_HOME/bbench."""
    if option:
        return Path(os.path.expanduser(option))
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bbench"


def digest(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def stamp(path: Path) -> Optional[list]:
    """What an index depends on for one path: its absolute name, mtime and size (None if absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [str(path.resolve()), st.st_mtime_ns, st.st_size]


def cached_json(cache: Optional[Path], kind: str, key: Mapping[str, Any],
                compute: Callable[[], Any]) -> Any:
    """`compute()`, memoised as JSON under `<cache>/index/` by `key` (never in the data dir)."""
    if cache is None:
        return compute()
    full_key = {"version": INDEX_VERSION, "kind": kind, **key}
    path = cache / "index" / f"{kind}-{digest(full_key, 24)}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == json.loads(json.dumps(full_key, default=str)):
            return stored["value"]
    except (OSError, ValueError, AttributeError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": full_key, "value": value}, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache only costs time
        log.debug("could not write index cache %s: %s", path, err)
    return value


# ---------------------------------------------------------------------------------------------
# Frames: listing and selection
# ---------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Numeric-aware sort key: frame_2 < frame_10; equals plain order for zero-padded names."""
    parts = tuple(int(t) if t.isdigit() else t for t in _DIGITS.split(name))
    return parts, name


def list_frames(folder: Path | str) -> list[str]:
    """Names of the frame files (.jpg/.jpeg/.png) in `folder`, natural sort; [] if absent."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries
                     if e.name.lower().endswith(FRAME_EXTENSIONS) and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=natural_key)


def list_clip_frames(frames_root: Path, names: Sequence[str], cache: Optional[Path],
                     kind: str) -> dict[str, list[str]]:
    """Frame listing of every clip folder `frames_root/<name>` (cached by root mtime and names)."""
    key = {"root": stamp(frames_root), "names": digest(list(names), 32)}
    return cached_json(cache, kind, key, lambda: {n: list_frames(frames_root / n) for n in names})


def frame_indices(n: int, count: int, rng: Optional[np.random.Generator]) -> list[int]:
    """`count` frame positions out of `n` sorted frames by the §2.0 rule (rng None = eval)."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    seg = n // count
    if seg == 0:  # short clip: frames repeated, same in train and eval
        return [i * n // count for i in range(count)]
    if rng is None:
        return [i * seg + seg // 2 for i in range(count)]
    offsets = rng.integers(0, seg, size=count)
    return [i * seg + int(o) for i, o in enumerate(offsets)]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training sample: a function of (run seed, epoch, index) only."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def decode_image(source: Path | bytes, name: str, mode: str, dataset: str) -> torch.Tensor:
    """(C, H, W) uint8 of an image file or an encoded byte string; errors name the source."""
    from PIL import Image, UnidentifiedImageError

    try:
        handle = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        with handle as img:
            array = np.array(img.convert(mode))
    except FileNotFoundError:
        raise MissingDataError(f"{dataset}: frame file is missing: {name} (it was listed when the "
                               f"index was built; if files changed since, remove the bbench index "
                               f"cache or re-run prepare); {prepare_hint(dataset)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise malformed(dataset, name, f"cannot decode image ({err}); the file is truncated or "
                                       f"not an image") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def stack_frames(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T, C, H, W) from per-frame tensors; frames of another size are resized to the first's."""
    height, width = frames[0].shape[-2:]
    same = [f if f.shape[-2:] == (height, width)
            else TF.resize(f, [height, width], antialias=True) for f in frames]
    return torch.stack(same)


def resized_crop_box(height: int, width: int, rng: np.random.Generator,
                     scale: tuple[float, float] = (0.08, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, torchvision's algorithm with our generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalise_rgb(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, H, W) → float32 in ImageNet normalisation."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return frames.float().div_(255.0).sub_(mean).div_(std)


def clip_train_crop(frames: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One RandomResizedCrop box and one flip (p 0.5) drawn per clip, applied to all T frames."""
    height, width = frames.shape[-2:]
    top, left, h, w = resized_crop_box(height, width, rng)
    out = TF.resized_crop(frames, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out


def resize_exact(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to exactly size × size (aspect ratio not kept, as the public loaders)."""
    return TF.resize(frames, [size, size], antialias=True)


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------

def fit_audio(array: Any, frames: int, mel_bins: int, pad_value: float, source: str,
              dataset: str, warn: Callable[[str, str], None]) -> torch.Tensor:
    """(1, frames, mel_bins) float32 from a stored (T, F) or (1, T, F) spectrogram.

    Values are used as stored (already normalised, §3.2); a different length is cropped or
    padded at the end with `pad_value`, with one warning per split.
    """
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 2 or tensor.shape[1] != mel_bins or not tensor.is_floating_point():
        raise malformed(dataset, source,
                        f"audio array has shape {tuple(tensor.shape)} and dtype {tensor.dtype}; "
                        f"expected a float (T, {mel_bins}) or (1, T, {mel_bins}) spectrogram "
                        f"(set dataset.options.mel_bins if your recipe uses another bin count)")
    tensor = tensor.to(torch.float32)
    length = int(tensor.shape[0])
    if length != frames:
        warn("audio_length", f"{dataset}: audio arrays of {length} frames (first: {source}) are "
                             f"{'cropped' if length > frames else 'padded'} to "
                             f"audio_frames={frames}")
        if length > frames:
            tensor = tensor[:frames]
        else:
            pad = torch.full((frames - length, mel_bins), float(pad_value), dtype=torch.float32)
            tensor = torch.cat([tensor, pad])
    return tensor.unsqueeze(0).contiguous()


def load_torch_tensor(path: Path, dataset: str) -> torch.Tensor:
    """A `.pt` tensor, read with `weights_only=True` (no code runs)."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingDataError(f"{dataset}: audio file is missing: {path}; "
                               f"{prepare_hint(dataset)}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise malformed(dataset, path, f"cannot read as a torch-saved tensor ({err})") from None
    if not isinstance(value, torch.Tensor):
        raise malformed(dataset, path, f"holds a {type(value).__name__}, expected a tensor")
    return value


def load_numpy(path: Path, dataset: str, mmap: bool = False) -> np.ndarray:
    """A `.npy` array (no pickled objects)."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise MissingDataError(f"{dataset}: file is missing: {path}; "
                               f"{prepare_hint(dataset)}") from None
    except Exception as err:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError
        raise malformed(dataset, path, f"cannot read as a .npy array ({err})") from None


# ---------------------------------------------------------------------------------------------
# The restricted unpickler (§0.3)
# ---------------------------------------------------------------------------------------------

def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    for name in ("set", "frozenset", "bytearray", "list", "dict", "tuple"):
        for module in ("builtins", "__builtin__"):
            allowed[(module, name)] = getattr(builtins, name)
    return allowed


ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy array/dtype/scalar reconstruction and builtin containers, nothing else."""

    def __init__(self, file: Any, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle global {module}.{name}: bbench only loads "
                f"numpy arrays and builtin containers from pickles (unpickling can run code); "
                f"if you trust this file, set dataset.options.trust_pickles=true") from None


def load_pickle(path: Path | bytes, trust: bool, source: Optional[str] = None,
                dataset: str = "dataset") -> Any:
    """Unpickle a file (or bytes) with the restricted unpickler, or plain pickle if trusted.

    A text-decoding failure (Python 2 pickles) is retried with `encoding="latin1"`.
    """
    source = source or str(path)

    def attempt(**kwargs: Any) -> Any:
        if isinstance(path, (bytes, bytearray)):
            stream: Any = io.BytesIO(path)
        else:
            stream = open(path, "rb")
        with stream:
            if trust:
                return pickle.Unpickler(stream, **kwargs).load()
            return RestrictedUnpickler(stream, source, **kwargs).load()

    try:
        try:
            return attempt()
        except UnicodeDecodeError:
            return attempt(encoding="latin1")
    except FileNotFoundError:
        raise MissingDataError(f"{dataset}: file is missing: {source}; "
                               f"{prepare_hint(dataset)}") from None
    except UnsafePickleError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or foreign pickles raise many types
        raise malformed(dataset, source, f"cannot unpickle ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------
# Skips, carve-out
# ---------------------------------------------------------------------------------------------

@dataclass
class SkipReport:
    """Listed samples that were not usable (missing files, no frames), reported once.

    `expected` holds the ids the user declared unusable (the `expected_missing` option):
    their skips are reported at INFO level as declared, every other skip with a WARNING.
    """

    dataset: str
    split: str
    listed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    expected: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.expected = frozenset(self.expected)

    def skip(self, sample_id: str, reason: str) -> None:
        self.skipped.append((sample_id, reason))

    @property
    def unexpected_skips(self) -> list[tuple[str, str]]:
        """Skips of ids not declared in `expected_missing` (the ones warned about)."""
        return [(i, r) for i, r in self.skipped if i not in self.expected]

    @property
    def expected_skips(self) -> list[tuple[str, str]]:
        """Skips of ids declared in `expected_missing` (reported at INFO level)."""
        return [(i, r) for i, r in self.skipped if i in self.expected]

    def emit(self, used: Iterable[str] = ()) -> None:
        """Log the skips; `used` (the split's usable ids) names declared ids that were present."""
        unexpected, expected = self.unexpected_skips, self.expected_skips
        if unexpected:
            also = (f"; {len(expected)} more skipped as declared in the dataset option "
                    f"expected_missing" if expected else "")
            log.warning("%s %s: skipped %d of %d listed samples: %s%s", self.dataset, self.split,
                        len(unexpected), self.listed, _first_skips(unexpected), also)
        if expected:
            log.info("%s %s: skipped %d of %d listed samples as declared in the dataset option "
                     "expected_missing: %s", self.dataset, self.split, len(expected), self.listed,
                     _first_skips(expected))
        present = [i for i in dict.fromkeys(used) if i in self.expected]
        if present:
            shown = ", ".join(present[:5]) + (f", … {len(present) - 5} more"
                                              if len(present) > 5 else "")
            log.info("%s %s: %d id(s) declared in the dataset option expected_missing are present "
                     "and usable, so they are used: %s", self.dataset, self.split, len(present),
                     shown)


def _first_skips(skips: Sequence[tuple[str, str]], count: int = 5) -> str:
    first = "; ".join(f"{i} ({r})" for i, r in skips[:count])
    return first + (f"; … {len(skips) - count} more" if len(skips) > count else "")


def no_usable_samples(dataset: str, split: str, report: SkipReport, layout: str
                      ) -> DataFormatError:
    first = "; ".join(f"{i} ({r})" for i, r in report.skipped[:3]) or "the list is empty"
    return MissingDataError(f"{dataset}: no usable {split} samples: {report.listed} listed, "
                            f"{len(report.skipped)} skipped (first: {first})\nexpected layout:\n"
                            f"{layout}\n{prepare_hint(dataset)}")


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


# ---------------------------------------------------------------------------------------------
# Splits backed by files
# ---------------------------------------------------------------------------------------------

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
                value = sample[m]
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


# ---------------------------------------------------------------------------------------------
# Options shared by the loaders
# ---------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class ClipOptions(CommonOptions):
    """Options of the spectrogram + frames datasets (CREMA-D, KS, BalancedAV, VGGSound)."""

    frames_per_clip: int = param(3, ge=1, doc="T, frames per clip (CREMA-D: 2)")
    audio_frames: int = param(1024, ge=1, doc="spectrogram frames; other lengths are cropped/padded")
    mel_bins: int = param(128, ge=1, doc="mel bins of the stored spectrograms")
    audio_pad_value: float = param(AUDIO_PAD_VALUE, doc="value padded audio frames get")


def index_cache_dir(options: CommonOptions) -> Optional[Path]:
    return cache_root(options.cache_dir) if options.index_cache else None


# ---------------------------------------------------------------------------------------------
# Audio + frame-folder clips (CREMA-D, Kinetics-Sounds, VGGSound)
# ---------------------------------------------------------------------------------------------

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

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]:
        record = self.records[position]
        opts = self.options
        out: dict[str, torch.Tensor] = {}
        if "audio" in self.modalities:
            out["audio"] = fit_audio(self.load_audio(record.audio, self.dataset), opts.audio_frames,
                                     opts.mel_bins, opts.audio_pad_value, str(record.audio),
                                     self.dataset, warn)
        if "visual" in self.modalities:
            picks = frame_indices(len(record.frames), opts.frames_per_clip, rng)
            frames = stack_frames([decode_image(record.frames_dir / record.frames[k],
                                                str(record.frames_dir / record.frames[k]), "RGB",
                                                self.dataset) for k in picks])
            frames = (clip_train_crop(frames, opts.image_size, rng) if rng is not None
                      else resize_exact(frames, opts.image_size))
            out["visual"] = normalise_rgb(frames)
        return out


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


def read_text_lines(path: Path, dataset: str, what: str, layout: str) -> list[str]:
    """Lines of a list file (UTF-8 with or without BOM, LF or CRLF), blank lines dropped."""
    if not path.is_file():
        raise missing(dataset, what, path, layout)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]
