"""Test support: miniature copies of the paper datasets' on-disk formats (datasets.md §5).

`make_miniature(dataset, root, seed)` writes a miniature of `dataset` (canonical id or alias)
into `root` and returns the `bbench.run` override dict that points at it, e.g.::

    overrides = make_miniature("cremad", tmp_path / "cremad")
    bbench.run("Baseline", "cremad", output_root=str(tmp_path / "runs"), **overrides)

The dict holds `dataset.root`, `dataset.options` (tiny `image_size`, `audio_frames`, a cache
folder beside the data), `model.encoders` (the real backbone types at tiny sizes) and CPU
smoke-run training settings; `.facts` on it describes the edge cases the miniature contains.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bbench.testing.fixtures import (
    Miniature,
    make_balanced_av,
    make_cmu_mosei,
    make_cremad,
    make_food101,
    make_kinetics_sounds,
    make_ucf101,
    make_vggsound,
)

MINIATURES: dict[str, Callable[..., Miniature]] = {
    "cremad": make_cremad,
    "kinetics_sounds": make_kinetics_sounds,
    "balanced_av": make_balanced_av,
    "vggsound": make_vggsound,
    "ucf101": make_ucf101,
    "food101": make_food101,
    "cmu_mosei": make_cmu_mosei,
}
"""Generator of each paper dataset's miniature, by canonical dataset id."""


def make_miniature(dataset: str, root: Path, seed: int = 0) -> dict[str, Any]:
    """Write the miniature of `dataset` into `root`; return its `bbench.run` overrides."""
    from bbench.data.registry import DATASETS

    name = DATASETS.canonical(dataset)
    if name not in MINIATURES:
        raise KeyError(f"no miniature for dataset {name!r}; available: {', '.join(MINIATURES)}")
    return MINIATURES[name](Path(root), seed=seed)


__all__ = ["MINIATURES", "Miniature", "make_miniature"]
