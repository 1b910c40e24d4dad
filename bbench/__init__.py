"""bbench: a benchmark harness for multimodal imbalance learning.

`bbench.run(method=..., dataset=..., **overrides) -> RunResult` trains one method on one
dataset and writes its record; the CLI (`python -m bbench`) and the pytest plugin are thin
layers over it.
"""
from bbench._version import __version__
from bbench.results.record import RunResult
from bbench.runner import run

__all__ = ["RunResult", "__version__", "run"]
