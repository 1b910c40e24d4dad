"""Missing-modality robustness: each method's test accuracy with modalities missing at test time.

The Shapley evaluation already decides, for every modality subset S, which test samples the
fused prediction gets right with only S present; the runner records those accuracies v(S)
as `metrics["subset_acc"]` (keyed by `subset_name`, the empty set `∅` included). A missing
modality is absent exactly as Shapley makes it absent (`eval.mask`: zeroed raw input, or
zeroed features), so the table costs no pass over the data and agrees with the record's
Shapley values and imbalance I by construction.

Columns: nothing missing (the record's `acc`), each modality missing, and for M >= 3 every
larger proper subset missing. The case of every modality missing is left out: the model
then sees no input at all, so its accuracy is a constant of the model, not robustness.
Rows hold per-record values; the mean over seeds and intervals are the tables' job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Callable, Hashable, Sequence

from bbench.metrics.shapley import subset_members, subset_name
from bbench.report.table import row_label
from bbench.results.record import RunResult

EMPTY_SUBSET = subset_name(0, ())


@dataclass(frozen=True)
class Column:
    """One test condition: the modalities `missing`, the others `present`."""

    missing: tuple[str, ...]
    present: tuple[str, ...]

    @property
    def key(self) -> str:
        """The subset name of the present modalities, the key of `metrics["subset_acc"]`."""
        return "+".join(self.present) if self.present else EMPTY_SUBSET

    @property
    def label(self) -> str:
        """A table header: `all present`, or `without a+b`."""
        return f"without {'+'.join(self.missing)}" if self.missing else "all present"


def missing_columns(modalities: Sequence[str]) -> list[Column]:
    """Nothing missing, then each modality missing, then (M >= 3) each larger proper subset.

    Ordered by the number missing, then by modality order, so a row reads from the full
    model to the harshest condition.
    """
    M = len(modalities)
    missing_sets = sorted(range((1 << M) - 1), key=lambda s: (bin(s).count("1"), s))
    columns = []
    for missing in missing_sets:
        gone = subset_members(missing, M)
        columns.append(Column(tuple(modalities[m] for m in gone),
                              tuple(modalities[m] for m in range(M) if m not in gone)))
    return columns


def subset_accuracies(record: RunResult) -> dict[str, float] | None:
    """v(S) for every subset S of the record's evaluated modalities, or None when not recorded.

    Records written before `metrics["subset_acc"]` existed carry the same values in the
    top-level `shapley` block, so they are read from there.
    """
    found = record.metrics.get("subset_acc") or (record.extra.get("shapley") or {}).get(
        "subset_accuracy")
    return dict(found) if found else None


def unavailable_reason(record: RunResult) -> str | None:
    """Why the record has no subset accuracies (None when it has them)."""
    if subset_accuracies(record) is not None:
        return None
    stated = (record.extra.get("shapley") or {}).get("not_computed")
    if stated:
        return str(stated)
    if not (record.spec.get("eval") or {}).get("shapley", True):
        return "the run was evaluated with eval.shapley off, so no modality subset was evaluated"
    return "the record holds no subset accuracies"


def record_modalities(accuracies: dict[str, float]) -> tuple[str, ...]:
    """The evaluated modalities, in evaluation order: the members of the full subset's name
    (`subset_name` joins them in modality order, so the longest key is the full set)."""
    full = max((k for k in accuracies if k != EMPTY_SUBSET), key=lambda k: len(k.split("+")),
               default=None)
    return tuple(full.split("+")) if full else ()


def record_robustness(record: RunResult) -> dict[str, float] | None:
    """Column key -> test accuracy for one record (None when it has no subset accuracies)."""
    accuracies = subset_accuracies(record)
    if accuracies is None:
        return None
    return {c.key: float(accuracies[c.key]) for c in missing_columns(record_modalities(accuracies))}


@dataclass
class RobustnessRow:
    """One group of records (a configuration's seeds, say): per-record accuracies per column."""

    key: Hashable
    label: str
    method: str
    dataset: str
    mask: str
    columns: tuple[Column, ...]
    values: dict[str, list[float]] = field(default_factory=dict)  # column key -> one per record
    unavailable: str | None = None  # why none of the group's records has subset accuracies

    @property
    def n(self) -> int:
        """Records with subset accuracies in the group (the seeds behind each mean)."""
        return len(next(iter(self.values.values()), []))

    def mean(self, column: Column | str) -> float | None:
        """Mean over the group's records of one column (None when the row has no values)."""
        values = self.values.get(column.key if isinstance(column, Column) else column)
        return mean(values) if values else None


def robustness_rows(records: Sequence[RunResult], group: Callable[[RunResult], Hashable],
                    label: Callable[[RunResult], str] = row_label) -> list[RobustnessRow]:
    """One row per group (`group(record)`), in order of first appearance.

    Records without a fused test accuracy (evaluation procedures) are no rows: nothing is
    missing from a prediction they do not make. A group whose records have no subset
    accuracies still gets a row, with `unavailable` saying why, so the table shows the gap.
    """
    rows: dict[Hashable, RobustnessRow] = {}
    for record in records:
        if "acc" not in record.metrics:
            continue
        key = group(record)
        row = rows.get(key)
        accuracies = subset_accuracies(record)
        if row is None:
            row = rows[key] = RobustnessRow(
                key, label(record), record.method, record.dataset,
                str((record.spec.get("eval") or {}).get("mask", "input")), (),
                unavailable=None if accuracies is not None else unavailable_reason(record))
        if accuracies is None:
            continue
        modalities = record_modalities(accuracies)
        columns = tuple(missing_columns(modalities))
        if not row.columns:
            row.columns, row.unavailable = columns, None
        elif columns != row.columns:
            raise ValueError(f"{record.record_path}: evaluated on modalities {'+'.join(modalities)}, "
                             f"the other records of its group {row.label!r} on "
                             f"{row.columns[0].key}; group the records of one configuration only")
        for column in columns:
            row.values.setdefault(column.key, []).append(float(accuracies[column.key]))
    return list(rows.values())
