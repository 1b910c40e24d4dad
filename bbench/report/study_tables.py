"""The paper's tables built from seed groups of run records, with statistics across seeds.

- Table 2: test accuracy and macro-F1 per dataset, `mean ± std (n)` in percent, the best
  row of each column in bold and the second underlined (as in the paper; ranked among the
  reference method and the balancing methods: per-modality rows and family averages are
  read against, not ranked), family averages, the per-modality (Unimodal) rows, and † on a
  significant paired win over the reference method (Baseline). Optionally the paper's
  published value beside each measured one.
- Paired comparisons: each method against the reference and against the best per-modality
  row of its dataset, on shared seeds (stats.py).
- Table 3: mean training FLOPs, training seconds and peak memory per method and family.
- The imbalance table (Shapley value per modality and I) and the robustness table (test
  accuracy with modalities missing; robustness.py).

Rows are ordered and labelled from the methods' declared facts (family, per-modality
rows, the comparison reference), never by a method's name. A configuration is a seed
group (load.py); two groups of one method on one dataset (a different setting) get their
differing method parameters in the label.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Callable, NamedTuple, Sequence

from bbench.config.identity import spec_hash
from bbench.data.registry import DATASETS
from bbench.methods.facts import Family
from bbench.methods.registry import METHODS, methods_in_table_order, reference_method
from bbench.report.export import Cell, Table
from bbench.report.load import SeedGroup
from bbench.report.robustness import robustness_rows
from bbench.report.stats import Paired, Summary, paired, summarize
from bbench.report.table import row_label

SIGNIFICANT_MARK = "†"
SEED_NOTE = ("Cells: mean ± sample standard deviation over seeds, the number of seeds in "
             "parentheses.")


@dataclass
class Row:
    """One table row: a label and its seed group on each dataset."""

    label: str
    family: Family
    per_modality: bool
    groups: dict[str, SeedGroup]


def scored(groups: Sequence[SeedGroup]) -> list[SeedGroup]:
    """Groups with a fused test accuracy (evaluation procedures have none)."""
    return [g for g in groups if "acc" in g.first.metrics]


def dataset_order(groups: Sequence[SeedGroup]) -> list[str]:
    registered = list(DATASETS)
    names = list(dict.fromkeys(g.dataset for g in groups))
    return sorted(names, key=lambda n: registered.index(n) if n in registered else len(registered))


def comparable_key(group: SeedGroup) -> str:
    """The spec hash without method, method parameters and seed: groups trained alike."""
    spec = {k: v for k, v in group.first.spec.items() if k not in ("method", "method_params")}
    spec = {**spec, "train": {k: v for k, v in spec.get("train", {}).items() if k != "seed"}}
    return spec_hash(spec)


def build_rows(groups: Sequence[SeedGroup]) -> list[Row]:
    """Rows in table order; same-label groups on one dataset are told apart by their parameters."""
    by_label: dict[str, list[SeedGroup]] = {}
    for g in groups:
        by_label.setdefault(row_label(g.first), []).append(g)
    rows: dict[str, Row] = {}
    for label, members in by_label.items():
        for g in members:
            name = label + _distinction(g, [o for o in members if o.dataset == g.dataset])
            cls = METHODS.get(g.method)
            row = rows.setdefault(name, Row(name, cls.family, cls.per_modality is not None, {}))
            row.groups[g.dataset] = g
    order = methods_in_table_order({g.method for g in groups})
    return sorted(rows.values(), key=lambda r: (order.index(next(iter(r.groups.values())).method),
                                                r.label))


def _distinction(group: SeedGroup, same: Sequence[SeedGroup]) -> str:
    """` (alpha=0.5)`: the method parameters in which this group differs from its namesakes."""
    if len(same) < 2:
        return ""
    params = group.first.spec.get("method_params", {})
    differing = sorted(k for k in params
                       if any(o.first.spec.get("method_params", {}).get(k) != params[k] for o in same))
    if differing:
        return " (" + ", ".join(f"{k}={params[k]}" for k in differing) + ")"
    return f" [{group.key[:8]}]"


def reference_group(group: SeedGroup, groups: Sequence[SeedGroup]) -> SeedGroup | None:
    """The reference method's group trained like `group` (or the only one on its dataset)."""
    ref = reference_method()
    candidates = [g for g in groups if g.method == ref and g.dataset == group.dataset]
    key = comparable_key(group)
    alike = [g for g in candidates if comparable_key(g) == key]
    return (alike or (candidates if len(candidates) == 1 else [None]))[0]


def best_per_modality_group(group: SeedGroup, groups: Sequence[SeedGroup]) -> SeedGroup | None:
    """The per-modality reference row with the highest mean accuracy on `group`'s dataset."""
    candidates = [g for g in groups if g.dataset == group.dataset
                  and METHODS.get(g.method).per_modality is not None
                  and METHODS.get(g.method).family == Family.REFERENCE]
    key = comparable_key(group)
    alike = [g for g in candidates if comparable_key(g) == key] or candidates
    return max(alike, key=lambda g: mean(g.values("acc").values()), default=None)


def stat_cell(values: dict[int, float], scale: float = 1.0, digits: int = 2,
              fmt: str = "f") -> Cell:
    """`mean ± std (n)` of per-seed values; an empty cell when there are none."""
    if not values:
        return Cell("")
    s = summarize([scale * v for v in values.values()])
    spread = f" ± {s.std:.{digits}{fmt}}" if s.std is not None else ""
    return Cell(f"{s.mean:.{digits}{fmt}}{spread} ({s.n})", stats=s)


def _emphasize(cells: Sequence[Cell]) -> None:
    """Bold the best mean, underline the second (ties share the emphasis)."""
    means = sorted({c.stats.mean for c in cells if c.stats is not None}, reverse=True)
    for c in cells:
        if c.stats is not None and means:
            c.bold = c.stats.mean == means[0]
            c.underline = len(means) > 1 and c.stats.mean == means[1]


def _family_average(members: Sequence[Row], column: Callable[[Row], Cell | None], digits: int = 2,
                    fmt: str = "f") -> Cell:
    """Mean of the member rows' means (n = the number of methods averaged)."""
    means = [c.stats.mean for c in (column(r) for r in members) if c is not None and c.stats]
    if not means:
        return Cell("")
    s = Summary(len(means), mean(means), None, None, None)
    return Cell(f"{s.mean:.{digits}{fmt}}", stats=s)


def _with_family_averages(rows: Sequence[Row], cells: Callable[[Row], list[Cell]],
                          averages: Callable[[list[Row]], list[Cell]]) -> list[list[Cell]]:
    """Rows in order, each balancing family closed by its average row."""
    out: list[list[Cell]] = []
    for family in Family:
        members = [r for r in rows if r.family == family]
        out += [[Cell(r.label), Cell(str(r.family)), *cells(r)] for r in members]
        if members and family.balancing:
            out.append([Cell(f"{family} avg"), Cell(str(family)), *averages(members)])
    return out


def read_paper_values(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """The published Table 2 (TSV: method, dataset, acc, f1 in percent; `#` comment lines)."""
    try:
        lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
        table = {}
        for row in csv.DictReader(lines, delimiter="\t"):
            table[(_token(row["method"]), row["dataset"])] = {
                m: float(row[m]) for m in ("acc", "f1") if row.get(m)}
        return table
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a paper table (tab-separated method, dataset, acc, f1): "
                         f"{err}") from None


def _token(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_value(paper: dict[tuple[str, str], dict[str, float]], label: str, dataset: str,
                metric: str) -> float | None:
    """The paper's number for a row: per-modality rows by the modality's position (`-1`, `-2`:
    the paper's Unimodal-k is the k-th modality in the dataset's order), family averages by
    the family name's end (the paper prints `Forward Avg`)."""
    head, _, modality = label.partition("-")
    entry = DATASETS.get(dataset) if dataset in DATASETS else None
    keys = [_token(label)]
    if entry is not None and modality in entry.modalities and head in METHODS \
            and METHODS.get(head).per_modality:
        keys.append(_token(f"{head}{entry.modalities.index(modality) + 1}"))
    for (name, ds), values in paper.items():
        if ds == dataset and metric in values and (name in keys or (
                label.endswith(" avg") and _token(label).endswith(name) and name.endswith("avg"))):
            return values[metric]
    return None


def table2(groups: Sequence[SeedGroup], paper: dict[tuple[str, str], dict[str, float]] | None = None
           ) -> Table:
    """Accuracy and macro-F1 per dataset (percent), the paper's emphasis and significance marks."""
    groups = scored(groups)
    rows = build_rows(groups)
    datasets = dataset_order(groups)
    metrics = ("acc", "f1")
    headers = ["Method", "Family"]
    for d in datasets:
        for m in metrics:
            headers.append(f"{d} {m.upper()} %")
            if paper is not None:
                headers.append(f"{d} {m.upper()} % (paper)")

    built: dict[tuple[str, str, str], Cell] = {}
    for r in rows:
        for d, g in r.groups.items():
            ref = reference_group(g, groups)
            for m in metrics:
                cell = stat_cell(g.values(m), 100)
                if ref is not None and ref is not g and not r.per_modality:
                    result = paired(g.values(m), ref.values(m))
                    if result is not None:
                        cell.p_value = result.p_value
                        cell.mark = SIGNIFICANT_MARK if result.significant_win() else ""
                built[(r.label, d, m)] = cell
    for d in datasets:
        for m in metrics:
            _emphasize([built[(r.label, d, m)] for r in rows
                        if not r.per_modality and (r.label, d, m) in built])

    def cells(r: Row) -> list[Cell]:
        out = []
        for d in datasets:
            for m in metrics:
                out.append(built.get((r.label, d, m), Cell("")))
                if paper is not None:
                    out.append(_paper_cell(paper, r.label, d, m))
        return out

    def averages(members: list[Row]) -> list[Cell]:
        out = []
        for d in datasets:
            for m in metrics:
                out.append(_family_average(members, lambda r: built.get((r.label, d, m))))
                if paper is not None:
                    out.append(_paper_cell(paper, f"{members[0].family} avg", d, m))
        return out

    notes = [SEED_NOTE, "Bold: best mean of the column, underlined: second (reference and balancing "
                        "methods ranked; per-modality rows and family averages not). "
                        f"{SIGNIFICANT_MARK}: higher than {reference_method()} trained alike, paired by "
                        f"seed, p < 0.05 (two-sided paired t-test). Family averages: mean of the "
                        f"family's method means."]
    if paper is not None:
        notes.append("(paper): the value published in Table 2 of the BalanceBenchmark paper for the "
                     "same method and dataset (empty where it reports none).")
    return Table("table2", "Table 2: test accuracy and macro-F1 (%)", headers,
                 _with_family_averages(rows, cells, averages), label_columns=2, notes=notes)


def _paper_cell(paper: dict[tuple[str, str], dict[str, float]], label: str, dataset: str,
                metric: str) -> Cell:
    value = paper_value(paper, label, dataset, metric)
    return Cell("" if value is None else f"{value:.2f}")


def _difference_cells(result: Paired | None, scale: float = 100) -> list[Cell]:
    if result is None:
        return [Cell("")] * 4
    ci = (f"[{scale * result.ci_low:+.2f}, {scale * result.ci_high:+.2f}]"
          if result.ci_low is not None else "")
    s = Summary(result.n, scale * result.mean_diff, None,
                None if result.ci_low is None else scale * result.ci_low,
                None if result.ci_high is None else scale * result.ci_high)
    p = "" if result.p_value is None else f"{result.p_value:.3g}"
    return [Cell(f"{scale * result.mean_diff:+.2f} {ci} ({result.n})".replace("  ", " "), stats=s,
                 p_value=result.p_value, mark=SIGNIFICANT_MARK if result.significant_win() else ""),
            Cell(p), Cell(f"{result.p_improve:.2f}"), Cell("")]


def paired_table(groups: Sequence[SeedGroup]) -> Table:
    """Each non-reference configuration against the reference and the best per-modality row."""
    groups = scored(groups)
    datasets = dataset_order(groups)
    ref_name = reference_method()
    rows: list[list[Cell]] = []
    for r in build_rows(groups):
        if r.per_modality or next(iter(r.groups.values())).method == ref_name:
            continue
        for d in (d for d in datasets if d in r.groups):
            g = r.groups[d]
            ref, uni = reference_group(g, groups), best_per_modality_group(g, groups)
            for m in ("acc", "f1"):
                vs_ref = paired(g.values(m), ref.values(m)) if ref is not None else None
                vs_uni = paired(g.values(m), uni.values(m)) if uni is not None else None
                a, b = _difference_cells(vs_ref), _difference_cells(vs_uni)
                b[3] = Cell(row_label(uni.first) if uni is not None else "")
                rows.append([Cell(r.label), Cell(d), Cell(m.upper()), *a[:3], *b])
    headers = ["Method", "Dataset", "Metric", f"Δ vs {ref_name} (pts) [95% CI] (pairs)", "p",
               "P(improve)", "Δ vs best unimodal (pts) [95% CI] (pairs)", "p", "P(improve)",
               "best unimodal row"]
    return Table("paired", "Paired differences by seed", headers, rows, label_columns=3, notes=[
        "Δ: method minus reference on the seeds both have (percentage points). The best unimodal "
        "row is the per-modality row with the highest mean accuracy on the dataset. "
        f"{SIGNIFICANT_MARK}: positive and p < 0.05. P(improve): fraction of seed pairs where the "
        "method scores higher (ties count one half)."])


MIB = 2.0 ** 20


class CostColumn(NamedTuple):
    metric: str
    header: str
    scale: float
    digits: int
    fmt: str


COST_COLUMNS = (CostColumn("train_flops", "train FLOPs", 1.0, 3, "e"),
                CostColumn("train_seconds", "train s", 1.0, 2, "f"),
                CostColumn("peak_memory_bytes", "peak MiB", 1 / MIB, 1, "f"))


def table3(groups: Sequence[SeedGroup]) -> Table:
    """Mean training FLOPs, training seconds and peak memory per method, family averages."""
    groups = [g for g in groups if g.values("train_flops")]
    rows = build_rows(groups)
    datasets = dataset_order(groups)
    headers = ["Method", "Family"] + [f"{d} {c.header}" for d in datasets for c in COST_COLUMNS]

    def cell(r: Row, d: str, c: CostColumn) -> Cell | None:
        g = r.groups.get(d)
        return stat_cell(g.values(c.metric), c.scale, c.digits, c.fmt) if g is not None else None

    def cells(r: Row) -> list[Cell]:
        return [cell(r, d, c) or Cell("") for d in datasets for c in COST_COLUMNS]

    def averages(members: list[Row]) -> list[Cell]:
        return [_family_average(members, lambda r, d=d, c=c: cell(r, d, c), c.digits, c.fmt)
                for d in datasets for c in COST_COLUMNS]

    return Table("table3", "Table 3: training cost", headers,
                 _with_family_averages(rows, cells, averages), label_columns=2, notes=[
                     SEED_NOTE, "Training FLOPs: 2 × multiply-adds of every training pass (backward "
                     "and each method's extra passes included). Peak MiB: the largest CUDA memory "
                     "allocated on a GPU run; on the CPU the process's peak resident set size (runs "
                     "made in one process share it). Family averages: mean of the family's method "
                     "means."])


def imbalance_table(groups: Sequence[SeedGroup]) -> Table:
    """Shapley value of each modality and the imbalance degree I, per dataset."""
    groups = [g for g in scored(groups) if g.values("imbalance")]
    rows = build_rows(groups)
    datasets = dataset_order(groups)
    modalities = {d: list(dict.fromkeys(m for g in groups if g.dataset == d
                                        for r in g.records for m in r.metrics.get("shapley", {})))
                  for d in datasets}
    headers = ["Method", "Family"] + [h for d in datasets for h in
                                      [f"{d} φ[{m}]" for m in modalities[d]] + [f"{d} I"]]

    def cell(r: Row, d: str, metric: str) -> Cell | None:
        g = r.groups.get(d)
        return stat_cell(g.values(metric), 1.0, 4) if g is not None else None

    def cells(r: Row) -> list[Cell]:
        return [cell(r, d, metric) or Cell("") for d in datasets
                for metric in [f"shapley.{m}" for m in modalities[d]] + ["imbalance"]]

    def averages(members: list[Row]) -> list[Cell]:
        return [_family_average(members, lambda r, d=d, metric=metric: cell(r, d, metric), 4)
                for d in datasets for metric in [f"shapley.{m}" for m in modalities[d]] + ["imbalance"]]

    return Table("imbalance", "Imbalance: Shapley value per modality and imbalance degree I", headers,
                 _with_family_averages(rows, cells, averages), label_columns=2, notes=[
                     SEED_NOTE, "φ[m]: the modality's Shapley value (test accuracy it contributes); "
                     "I: the imbalance degree (docs/metrics.md)."])


def robustness_table(groups: Sequence[SeedGroup]) -> Table:
    """Test accuracy (%) with each modality (for M >= 3, each subset) missing at test time."""
    kept = scored(groups)
    records = [r for g in kept for r in g.records]
    keys = {id(r): g.key for g in groups for r in g.records}
    ordered = [(row.label, g.key) for row in build_rows(kept) for g in row.groups.values()]
    labels = {k: label for label, k in ordered}
    position = {k: i for i, (_, k) in enumerate(ordered)}
    order = dataset_order(groups)
    found = sorted(robustness_rows(records, group=lambda r: keys[id(r)],
                                   label=lambda r: labels[keys[id(r)]]),
                   key=lambda row: (order.index(row.dataset), position[row.key]))
    conditions = list(dict.fromkeys(c.label for row in found for c in row.columns))
    noted = any(row.unavailable for row in found)
    headers = ["Method", "Dataset", "eval mask"] + [f"{c} acc %" for c in conditions] + \
        (["note"] if noted else [])
    rows = []
    for row in found:
        by_label = {c.label: stat_cell(dict(enumerate(row.values.get(c.key, []))), 100)
                    for c in row.columns}
        rows.append([Cell(row.label), Cell(row.dataset), Cell(row.mask),
                     *[by_label.get(c, Cell("")) for c in conditions],
                     *([Cell(row.unavailable or "")] if noted else [])])
    return Table("robustness", "Missing-modality robustness: test accuracy (%)", headers, rows,
                 label_columns=3, notes=[
                     SEED_NOTE, "A missing modality is absent exactly as the Shapley evaluation "
                     "makes it absent (the eval mask); values come from the records' subset "
                     "accuracies, no pass over the data."])


def selection_table(selections: Sequence[dict[str, Any]]) -> Table | None:
    """Each tuned (method, dataset): the selected hyper-parameters and the validation accuracy
    that chose them, from the studies' selection.json (`selections`: per row its search space,
    every trial, and `selected` = {trial, params, val_acc})."""
    rows = []
    for entry in selections:
        selection = entry["selection"]
        items = selection.get("selections", []) if isinstance(selection, dict) else []
        for item in (i for i in items if isinstance(i, dict)):
            chosen = item.get("selected") or {}
            space = item.get("space") or {}
            rows.append([Cell(str(item.get("label", item.get("method", "")))),
                         Cell(str(item.get("dataset", ""))),
                         Cell(", ".join(f"{k}={v}" for k, v in (chosen.get("params") or {}).items())),
                         Cell(_percent(chosen.get("val_acc"))), Cell(str(chosen.get("trial", ""))),
                         Cell(_count(item.get("trials"))),
                         Cell("; ".join(f"{k}: {v}" for k, v in space.items()))])
    if not rows:
        return None
    return Table("selection", "Selected hyper-parameters (tuning on validation accuracy only)",
                 ["Method", "Dataset", "selected", "validation acc %", "trial", "trials",
                  "search space"], rows, label_columns=2)


def _count(trials: Any) -> str:
    """The number of trials: a count, or the length of the list of trials."""
    return str(len(trials)) if isinstance(trials, list) else "" if trials is None else str(trials)


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else ""
