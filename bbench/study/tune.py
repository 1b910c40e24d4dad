"""Equal-budget tuning: the same number of drawn configurations for every tunable row,
selected on validation accuracy only.

Each trial trains once, at replicate 0's seed, and never reads the test split (its run is
validation-only). The score is the record's `val_acc`: the validation accuracy of the epoch
model selection kept, i.e. of exactly the model a final run would evaluate. The best score
wins; at equal accuracy the lower validation loss of that epoch (the rule model selection
itself uses: small validation sets such as mfeat's saturate, and many trials tie on
accuracy), then the earlier trial, so the choice does not depend on file or worker order.
A failed trial (say, a divergent configuration) scores nothing and is listed as such.
`selection.json` lists every trial with its parameters and score, and the selection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from bbench.config.fields import SearchSpace, describe_spaces, sample_configuration
from bbench.results.files import write_json
from bbench.study.declare import trial_generator

SELECTION_FILE = "selection.json"
SELECTION_METRIC = "val_acc"
TIE_METRIC = "val_loss"


def trial_configurations(study_seed: int, dataset: str, label: str,
                         spaces: Mapping[str, SearchSpace], trials: int) -> list[dict[str, Any]]:
    """The `trials` configurations of one row, drawn from its own generator."""
    rng = trial_generator(study_seed, dataset, label)
    return [sample_configuration(spaces, rng) for _ in range(trials)]


@dataclass(frozen=True)
class Trial:
    """One tuning trial's outcome: its configuration and validation score (None: no score)."""

    trial: int
    id: str
    params: dict[str, Any]
    score: float | None
    status: Literal["finished", "failed"]
    loss: float | None = None  # validation loss of the selected epoch: breaks accuracy ties

    def entry(self) -> dict[str, Any]:
        return {"trial": self.trial, "id": self.id, "params": self.params,
                SELECTION_METRIC: self.score, TIE_METRIC: self.loss, "status": self.status}


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The highest validation score; among equals the lowest validation loss (a trial without
    one last), then the earliest trial; None if none scored."""
    scored = [t for t in trials if t.score is not None]
    return min(scored, key=lambda t: (-t.score, math.inf if t.loss is None else t.loss, t.trial)
               ) if scored else None


@dataclass(frozen=True)
class Selection:
    """The tuning of one (row, dataset): every trial and the chosen one."""

    method: str
    label: str
    dataset: str
    spaces: Mapping[str, SearchSpace]
    trials: tuple[Trial, ...]

    @property
    def selected(self) -> Trial | None:
        return best_trial(self.trials)

    def entry(self) -> dict[str, Any]:
        chosen = self.selected
        return {"method": self.method, "label": self.label, "dataset": self.dataset,
                "space": describe_spaces(self.spaces),
                "trials": [t.entry() for t in self.trials],
                "selected": None if chosen is None else {
                    "trial": chosen.trial, "params": chosen.params, SELECTION_METRIC: chosen.score}}


def write_selection(root: Path, selections: Sequence[Selection], untuned: Sequence[tuple[str, str, str]]
                    ) -> None:
    """selection.json: tuned rows with their trials; rows without a search space listed as
    untuned (method, label, dataset), so a report can say they had nothing to tune."""
    write_json(root / SELECTION_FILE, {
        "metric": SELECTION_METRIC,
        "rule": "highest validation accuracy of the selected epoch; ties: its lower validation "
                "loss, then the earlier trial",
        "selections": [s.entry() for s in selections],
        "untuned": [{"method": m, "label": label, "dataset": d} for m, label, d in untuned],
    }, "tuning selection")
