"""Helpers shared by the plugin's modules: paths shown relative to the rootdir."""
from __future__ import annotations

from pathlib import Path


def relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
