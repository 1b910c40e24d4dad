"""Miniature datasets generated once per session (datasets.md §5) and helpers to load them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from bbench.config.specs import DatasetSpec
from bbench.data import build_datamodule
from bbench.data.base import DataModule
from bbench.testing import MINIATURES
from bbench.testing.fixtures import Miniature

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _bbench_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep every cache write (index, carved id lists) out of the user's ~/.cache."""
    old = os.environ.get("BBENCH_CACHE_DIR")
    os.environ["BBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("bbench-cache"))
    yield
    if old is None:
        os.environ.pop("BBENCH_CACHE_DIR", None)
    else:
        os.environ["BBENCH_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def miniature(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Miniature]:
    """miniature(name, **generator_kwargs): the session's copy (generated on first use)."""
    made: dict[tuple, Miniature] = {}

    def get(name: str, **kwargs: Any) -> Miniature:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{name}-mini") / name
            made[key] = MINIATURES[name](folder, seed=0, **kwargs)
        return made[key]

    return get


@pytest.fixture
def fresh(tmp_path: Path) -> Callable[..., Miniature]:
    """fresh(name, **kwargs): a private copy this test may damage."""

    def make(name: str, **kwargs: Any) -> Miniature:
        return MINIATURES[name](tmp_path / name, seed=0, **kwargs)

    return make


def load_miniature(name: str, mini: Miniature, split_seed: int = 0, modalities=None,
                   **options: Any) -> DataModule:
    """Build the DataModule of a miniature, with extra dataset options."""
    opts = dict(mini["dataset.options"])
    opts.update(options)
    return build_datamodule(DatasetSpec(name=name, root=mini["dataset.root"], options=opts,
                                        split_seed=split_seed,
                                        modalities=tuple(modalities) if modalities else None))


@pytest.fixture(scope="session")
def load() -> Callable[..., DataModule]:
    return load_miniature
