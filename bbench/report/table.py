"""Paper-style tables (Table 2 of the BalanceBenchmark paper, and the Figure-2 probe table).

Accuracies and F1 are shown as percentages (records hold fractions); FLOPs are training
FLOPs (2 × multiply-adds, backward and every extra pass included). Rows are ordered and
labelled from the methods' declared facts (family, per-modality rows), never by name.

A bench run with several seeds (`bench --seeds N`) prints the same two tables with every
number a mean over the seeds, its 95 % bootstrap interval and the seed count
(`mean [low, high] (n)`, stats.py), and † on a significant paired win over the reference
method.
"""
from __future__ import annotations

from statistics import mean
from typing import Any, Iterable, Sequence

from tabulate import tabulate

from bbench.methods.facts import Family
from bbench.methods.registry import METHODS, reference_method
from bbench.report.bench import BenchResult
from bbench.report.load import SeedGroup, group_records, metric_value
from bbench.report.stats import SIGNIFICANCE, paired, summarize
from bbench.results.record import RunResult

INACTIVE_MARK = " (window never opened)"
"""Marks a windowed method whose window lay outside the run: it trained with the plain step."""


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def row_label(r: RunResult) -> str:
    """The method, with its modality for a per-modality method (e.g. `Unimodal-mor`)."""
    return METHODS.get(r.method).label_for(r.spec["method_params"])


def family_of(r: RunResult) -> Family:
    return METHODS.get(r.method).family


def _row(r: RunResult, modalities: Sequence[str]) -> list[Any]:
    m = r.metrics
    label = row_label(r) + (INACTIVE_MARK if m.get("active_epochs") == 0 else "")
    return [label, str(family_of(r)), _pct(m.get("acc")), _pct(m.get("f1")),
            *[_pct(m.get(f"acc_{x}")) for x in modalities],
            f"{m['imbalance']:.4f}" if "imbalance" in m else "",
            f"{m['train_flops']:.3e}" if "train_flops" in m else "",
            f"{m.get('train_seconds', 0.0):.1f}"]


def comparison_table(bench: BenchResult, fmt: str = "github") -> str:
    """Rows in family order (reference rows first); each balancing family ends with its average.

    Runs without a fused test accuracy (evaluation procedures) are in `probe_table` instead.
    """
    mods = bench.modalities
    headers = ["Method", "Family", "Acc %", "F1 %", *[f"Acc[{x}] %" for x in mods], "I",
               "Train FLOPs", "Train s"]
    rows: list[list[Any]] = []
    scored = [r for r in bench.runs if "acc" in r.metrics]
    for family in Family:
        members = [r for r in scored if family_of(r) == family]
        rows += [_row(r, mods) for r in members]
        if members and family.balancing:
            rows.append([f"{family} avg", str(family),
                         _pct(mean(r.metrics["acc"] for r in members)),
                         _pct(mean(r.metrics["f1"] for r in members)),
                         *[_pct(mean(r.metrics[f"acc_{x}"] for r in members)) for x in mods],
                         f"{mean(r.metrics['imbalance'] for r in members):.4f}"
                         if all("imbalance" in r.metrics for r in members) else "",
                         f"{mean(r.metrics['train_flops'] for r in members):.3e}", ""])
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def probe_table(bench: BenchResult, fmt: str = "github") -> str:
    """Each modality: trained alone vs its encoder probed inside the jointly trained model.

    One table per probing run (a run whose record has `probe_acc_<m>`); the last column is
    the probed (source) run's own per-modality accuracy z_m, from its record.
    """
    tables = []
    for probe in (r for r in bench.runs if any(k.startswith("probe_acc_") for k in r.metrics)):
        m = probe.metrics
        source = next((r for r in bench.runs if str(r.run_dir) == m.get("source_run")), None)
        source_name = m.get("source_method") or reference_method()
        rows = [[x, _pct(m.get(f"unimodal_acc_{x}")), _pct(m.get(f"probe_acc_{x}")),
                 _pct(m.get(f"probe_gap_{x}")),
                 _pct(source.metrics.get(f"acc_{x}") if source is not None else None)]
                for x in bench.modalities]
        headers = ["Modality", "Trained alone acc %", f"{row_label(probe)} acc % ({source_name})",
                   "Gap (pts)", f"{source_name} z_m acc %"]
        tables.append(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    return "\n\n".join(tables)


def interval_text(values: Iterable[float], scale: float = 100.0, fmt: str = ".2f") -> str:
    """`mean [low, high] (n)`: the mean over seeds, its bootstrap interval and the seed count."""
    x = [scale * v for v in values]
    if not x:
        return ""
    s = summarize(x)
    ci = f" [{s.ci_low:{fmt}}, {s.ci_high:{fmt}}]" if s.ci_low is not None else ""
    return f"{s.mean:{fmt}}{ci} ({s.n})"


def _group_row(g: SeedGroup, reference: SeedGroup | None, modalities: Sequence[str]) -> list[Any]:
    def cell(metric: str, scale: float = 100.0, fmt: str = ".2f") -> str:
        return interval_text(g.values(metric).values(), scale, fmt)

    compared = (reference is not None and reference is not g
                and METHODS.get(g.method).per_modality is None)
    result = paired(g.values("acc"), reference.values("acc")) if compared else None
    win = result is not None and result.significant_win()
    label = row_label(g.first) + (INACTIVE_MARK if g.first.metrics.get("active_epochs") == 0 else "")
    return [label, str(family_of(g.first)), cell("acc") + ("†" if win else ""), cell("f1"),
            *[cell(f"acc_{x}") for x in modalities], cell("imbalance", 1.0, ".4f"),
            cell("train_flops", 1.0, ".3e"), cell("train_seconds", 1.0, ".1f")]


def _mean_of_means(groups: Sequence[SeedGroup], metric: str, scale: float = 100.0,
                   spec: str = ".2f") -> str:
    """A family average: the mean of its members' means over seeds."""
    means = [mean(v.values()) for v in (g.values(metric) for g in groups) if v]
    return f"{scale * mean(means):{spec}}" if means else ""


def seeded_comparison_table(bench: BenchResult, fmt: str = "github") -> str:
    """`comparison_table` over seeds: every number `mean [95 % CI] (n seeds)`; family averages
    are the mean of the members' means; † marks a significant paired win in accuracy over
    the reference method (paired t-test over seeds, p < SIGNIFICANCE, positive difference;
    per-modality rows are references themselves and never marked)."""
    mods = bench.modalities
    groups, _ = group_records(r for r in bench.runs if "acc" in r.metrics)
    reference = next((g for g in groups if g.method == reference_method()), None)
    headers = ["Method", "Family", "Acc %", "F1 %", *[f"Acc[{x}] %" for x in mods], "I",
               "Train FLOPs", "Train s"]
    rows: list[list[Any]] = []
    for family in Family:
        members = [g for g in groups if family_of(g.first) == family]
        rows += [_group_row(g, reference, mods) for g in members]
        if members and family.balancing:
            rows.append([f"{family} avg", str(family), _mean_of_means(members, "acc"),
                         _mean_of_means(members, "f1"),
                         *[_mean_of_means(members, f"acc_{x}") for x in mods],
                         _mean_of_means(members, "imbalance", 1.0, ".4f"),
                         _mean_of_means(members, "train_flops", 1.0, ".3e"), ""])
    table = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    return (f"{table}\n\nmean [95 % bootstrap interval over seeds] (number of seeds); "
            f"†: accuracy above {reference_method()}, paired by seed, p < {SIGNIFICANCE} "
            f"(paired t-test)")


def seeded_probe_table(bench: BenchResult, fmt: str = "github") -> str:
    """`probe_table` over seeds: one table per probing configuration, each number
    `mean [95 % CI] (n)` over its seeds (z_m from each probe's own source run)."""
    known = {str(r.run_dir): r for r in bench.runs}
    probes = [r for r in bench.runs if any(k.startswith("probe_acc_") for k in r.metrics)]
    tables = []
    for g in group_records(probes)[0]:
        sources = [known.get(r.metrics.get("source_run")) for r in g.records]
        source_name = g.first.metrics.get("source_method") or reference_method()

        def over_seeds(key: str, runs: Sequence[RunResult | None]) -> str:
            return interval_text(v for v in (metric_value(r, key) for r in runs if r is not None)
                                 if v is not None)

        rows = [[x, over_seeds(f"unimodal_acc_{x}", g.records), over_seeds(f"probe_acc_{x}", g.records),
                 over_seeds(f"probe_gap_{x}", g.records), over_seeds(f"acc_{x}", sources)]
                for x in bench.modalities]
        headers = ["Modality", "Trained alone acc %", f"{row_label(g.first)} acc % ({source_name})",
                   "Gap (pts)", f"{source_name} z_m acc %"]
        tables.append(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    return "\n\n".join(tables)
