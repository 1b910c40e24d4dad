"""Helpers for the plugin tests: tiny case declarations on the synthetic dataset, run in-process
with pytester (the inner sessions share this process's torch and registries)."""
from __future__ import annotations

import importlib.metadata
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

# Import what the inner sessions' collection imports, once, in this process. pytester's
# in-process runs drop the modules first imported inside them; the dataset registry imports
# torchvision.transforms.v2, hence torch._dynamo and torch._inductor.test_operators, which
# registers a TORCH_LIBRARY namespace that cannot be registered twice. So when no earlier test
# had imported torchvision (`pytest tests/plugin` alone), the second inner session re-imported
# it and failed to collect: "Only a single TORCH_LIBRARY can be used to register the namespace
# _inductor_test".
import bbench.data  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]


def plugin_installed() -> bool:
    """True when bbench's `pytest11` entry point is installed (then no `-p` is needed)."""
    return any(ep.name == "bbench" for ep in importlib.metadata.entry_points(group="pytest11"))


PLUGIN_ARGS: tuple[str, ...] = () if plugin_installed() else ("-p", "bbench.pytest_plugin")

# Runs in well under a second each: 64 training samples, two epochs.
SMALL = {"dataset.options": {"n_train": 64, "n_val": 16, "n_test": 32, "dims": 6},
         "epochs": 2, "batch_size": 16}

HEADER = f"""
from bbench.cases import *
SMALL = {SMALL!r}
SYN = dataset("synthetic", "Syn", smoke=SMALL)
"""


class CaseRun:
    """Write `cases_demo.py` and run the plugin on it."""

    args = PLUGIN_ARGS

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.out = pytester.path / "runs-out"

    def declare(self, body: str, name: str = "cases_demo.py") -> Path:
        path = self.pytester.path / name
        path.write_text(HEADER + textwrap.dedent(body))
        return path

    def __call__(self, *args: str, subprocess: bool = False) -> pytest.RunResult:
        argv = [*PLUGIN_ARGS, "--bbench-out", str(self.out), "-p", "no:cacheprovider",
                "-W", "ignore::pytest.PytestAssertRewriteWarning", *args]
        if subprocess:
            return self.pytester.runpytest_subprocess(*argv)
        return self.pytester.runpytest_inprocess(*argv)

    def baseline(self, profile: str = "smoke") -> Path:
        return self.pytester.path / "baselines" / f"{profile}.json"

    def edit_baseline(self, case: str, metric: str, value: Any, profile: str = "smoke") -> None:
        path = self.baseline(profile)
        doc = json.loads(path.read_text())
        if value is None:
            del doc["cases"][case]
        else:
            doc["cases"].setdefault(case, {"metrics": {}})["metrics"][metric] = value
        path.write_text(json.dumps(doc, indent=1))


@pytest.fixture
def cases(pytester: pytest.Pytester) -> CaseRun:
    return CaseRun(pytester)
