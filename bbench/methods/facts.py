"""Typed facts a method declares on its class, read by the runner, bench, tables and cases.

Nothing outside a method's own file names it: `bench` orders rows by `Family`, runs one
row per modality for `per_modality` methods, resolves `inputs` through the runner, and the
case grid expects training FLOPs above Baseline's for `extra_passes` methods.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping


class Family(enum.Enum):
    """The paper's taxonomy plus the reference rows and evaluation procedures, in table order."""

    REFERENCE = "reference"
    DATA = "Data"
    FEED_FORWARD = "Feed-forward"
    OBJECTIVE = "Objective"
    OPTIMIZATION = "Optimization"
    EVALUATION = "evaluation procedure"

    @property
    def balancing(self) -> bool:
        """One of the four families of balancing methods (BalanceBenchmark §3)."""
        return self in BALANCING_FAMILIES

    def __str__(self) -> str:
        return self.value


BALANCING_FAMILIES = (Family.DATA, Family.FEED_FORWARD, Family.OBJECTIVE, Family.OPTIMIZATION)


@dataclass(frozen=True)
class RunInput:
    """A finished run a method needs before it can run (LinearProbe: the Baseline it probes).

    The runner finds a finished run of `method` (with `params`) on the same dataset,
    modalities, model, training settings and seed under the output root, or trains it, and
    hands it to the method as `ctx.inputs[name]` (a list: one run, or one per modality when
    `per_modality`, with `params[modality_param] = m`). A method parameter named `param`, when
    set, names the run directory (or directories) explicitly instead.
    """

    name: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    per_modality: bool = False
    modality_param: str = "modality"
    param: str | None = None
