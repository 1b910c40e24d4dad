"""Writing and reading the files of a run: atomic writes, strict JSON, clear errors.

Every file bbench writes goes through `atomic_write`: a temporary file next to the target,
then a rename, so an interrupted or failed write (Ctrl-C, a full disk) never leaves a
half-written record or checkpoint, and never leaves the temporary file behind. JSON is
written strictly (no `NaN`/`Infinity`, which other readers reject): a non-finite number is
stored as null.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping


class OutputWriteError(RuntimeError):
    """A file of the run could not be written (full disk, no permission, ...)."""


class MalformedFileError(ValueError):
    """A file bbench reads back (spec.json, record.json) is not what bbench wrote."""


def atomic_write(path: Path, write: Callable[[Path], None], what: str) -> None:
    """`write(tmp)`, then rename tmp to `path`; on any failure remove tmp, keep the old `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            kept = " (the previous version is unchanged)" if path.exists() else ""
            raise OutputWriteError(f"could not write the {what} {path}: {reason}{kept}") from None
        raise


def strict_json(obj: Any) -> Any:
    """Plain JSON data with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # tensors and numpy values
        return strict_json(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a JSON file")


def write_json(path: Path, data: Any, what: str) -> None:
    text = json.dumps(strict_json(data), indent=1, allow_nan=False)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"), what)


def read_json(path: Path, what: str) -> Any:
    """The parsed file, or one clear error naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected the {what} at {path}, found "
                                f"{'a directory' if path.is_dir() else 'nothing'}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MalformedFileError(f"{path}: the {what} is not valid JSON ({err}); it was edited or "
                                 f"damaged after bbench wrote it") from None
