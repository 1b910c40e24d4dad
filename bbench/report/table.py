"""Paper-style tables (Table 2 of the BalanceBenchmark paper, and the Figure-2 probe table).

Accuracies and F1 are shown as percentages (records hold fractions); FLOPs are training
FLOPs (2 × multiply-adds, backward and every extra pass included).
"""
from __future__ import annotations

from statistics import mean
from typing import Any, Sequence

from tabulate import tabulate

from bbench.methods.registry import METHODS
from bbench.report.bench import FAMILY_ORDER, BenchResult
from bbench.results.record import RunResult


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


INACTIVE_MARK = " (window never opened)"
"""Marks a windowed method whose window lay outside the run: its row is Baseline's training."""


def _row(label: str, family: str, r: RunResult, modalities: Sequence[str]) -> list[Any]:
    m = r.metrics
    if m.get("active_epochs") == 0:
        label += INACTIVE_MARK
    return [label, family, _pct(m.get("acc")), _pct(m.get("f1")),
            *[_pct(m.get(f"acc_{x}")) for x in modalities],
            f"{m['imbalance']:.4f}" if "imbalance" in m else "",
            f"{m['train_flops']:.3e}" if "train_flops" in m else "",
            f"{m.get('train_seconds', 0.0):.1f}"]


def comparison_table(bench: BenchResult, fmt: str = "github") -> str:
    """Rows: Unimodal-m, Baseline, then each family's methods followed by its average."""
    mods = bench.modalities
    headers = ["Method", "Family", "Acc %", "F1 %", *[f"Acc[{x}] %" for x in mods], "I",
               "Train FLOPs", "Train s"]
    rows: list[list[Any]] = []
    for r in bench.runs:
        if r.method == "Unimodal":
            rows.append(_row(f"Unimodal-{r.spec['method_params']['modality']}", "reference", r, mods))
    for r in bench.runs:
        if r.method == "Baseline":
            rows.append(_row("Baseline", "reference", r, mods))
    for family in FAMILY_ORDER:
        members = [r for r in bench.runs if METHODS.get(r.method).family == family]
        rows += [_row(r.method, family, r, mods) for r in members]
        if members:
            rows.append([f"{family} avg", family,
                         _pct(mean(r.metrics["acc"] for r in members)),
                         _pct(mean(r.metrics["f1"] for r in members)),
                         *[_pct(mean(r.metrics[f"acc_{x}"] for r in members)) for x in mods],
                         f"{mean(r.metrics['imbalance'] for r in members):.4f}"
                         if all("imbalance" in r.metrics for r in members) else "",
                         f"{mean(r.metrics['train_flops'] for r in members):.3e}", ""])
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def probe_table(bench: BenchResult, fmt: str = "github") -> str:
    """Each modality: Unimodal accuracy vs its encoder probed inside the Baseline model."""
    if bench.probe is None:
        return ""
    m = bench.probe.metrics
    rows = [[x, _pct(m.get(f"unimodal_acc_{x}")), _pct(m.get(f"probe_acc_{x}")),
             _pct(m.get(f"probe_gap_{x}")),
             _pct(next((r.metrics.get(f"acc_{x}") for r in bench.runs if r.method == "Baseline"), None))]
            for x in bench.modalities]
    headers = ["Modality", "Unimodal acc %", f"LinearProbe acc % ({m.get('source_method')})",
               "Gap (pts)", "Baseline z_m acc %"]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
