"""Reading the stored files of a dataset: list files, images, `.pt` tensors, `.npy` arrays, pickles.

One job: turn one file (or an encoded byte string) into Python values, and turn every way that
can fail into a `DataFormatError` naming the file. Pickles go through the restricted
unpickler of datasets.md §0.3 (numpy arrays and builtin containers only) unless the user
trusts them, because unpickling a foreign file can run code. Nothing here knows about splits,
transforms or caching.
"""
from __future__ import annotations

import builtins
import codecs
import io
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from bbench.data.errors import MissingDataError, UnsafePickleError, malformed, missing, prepare_hint


def read_text_lines(path: Path, dataset: str, what: str, layout: str) -> list[str]:
    """Lines of a list file (UTF-8 with or without BOM, LF or CRLF), blank lines dropped."""
    if not path.is_file():
        raise missing(dataset, what, path, layout)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def decode_image(source: Path | bytes, name: str, mode: str, dataset: str) -> torch.Tensor:
    """(C, H, W) uint8 of an image file or an encoded byte string; errors name the source.

    A view of the decoder's (H, W, C) array, not a copy: channels-last memory is what the
    uint8 resize reads fastest (torchvision's antialiased resize takes 0.5 ms instead of
    1.2 ms for two 480 × 360 frames, same values), and the pack stores frames that way.
    """
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
    return torch.from_numpy(array).permute(2, 0, 1)


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
