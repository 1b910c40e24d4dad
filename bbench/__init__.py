"""bbench: a benchmark harness for multimodal imbalance learning.

`bbench.run(method=..., dataset=..., **overrides) -> RunResult` trains one method on one
dataset and writes its record; the CLI (`python -m bbench`) and the pytest plugin are thin
layers over it. `run` and `RunResult` are imported on first use, so that importing a light
submodule (the pytest plugin, the compare tool) does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bbench._version import __version__

if TYPE_CHECKING:
    from bbench.results.record import RunResult
    from bbench.runner import run

__all__ = ["RunResult", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from bbench.runner import run

        return run
    if name == "RunResult":
        from bbench.results.record import RunResult

        return RunResult
    raise AttributeError(f"module 'bbench' has no attribute {name!r}")
