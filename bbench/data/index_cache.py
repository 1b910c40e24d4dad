"""The index cache: bbench's cache folder, cache keys and the cached frame listings of folders.

One job: listing the frame folders of a large dataset is slow, so a listing is memoised as JSON
under `<cache>/index/`, keyed by what it depends on (the folder's name, mtime and size and the
listed names) and never written inside the data. The frame listing itself (natural sort of
the image files in a folder) lives here because it is what the cache holds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

log = logging.getLogger("bbench")

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
INDEX_VERSION = 1
"""Bumped whenever the layout of cached index files changes."""
CACHE_ENV = "BBENCH_CACHE_DIR"


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
