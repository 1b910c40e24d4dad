"""Shared test helpers: small synthetic runs that train in well under a second."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import bbench

# Tests train tiny models, for which one intra-op thread is fastest and immune to a loaded
# machine (2 cores shared with compilers or xdist workers make OpenMP threads spin).
torch.set_num_threads(1)

SMALL = {"epochs": 2, "batch_size": 32, "progress": False,
         "dataset.options": {"n_train": 96, "n_val": 32, "n_test": 48, "dims": 6}}


@pytest.fixture
def small_run(tmp_path: Path):
    """Run a method on a tiny synthetic dataset under tmp_path; returns the RunResult."""

    def go(method: str = "Baseline", dataset: str = "synthetic", **overrides: Any) -> bbench.RunResult:
        settings: dict[str, Any] = dict(SMALL) if dataset == "synthetic" else {"progress": False}
        settings.update(overrides)
        settings.setdefault("output_root", str(tmp_path / "runs"))
        return bbench.run(method, dataset, **settings)

    return go
