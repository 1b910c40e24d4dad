"""Paper-style tables (Table 2 of the BalanceBenchmark paper, and the Figure-2 probe table).

Accuracies and F1 are shown as percentages (records hold fractions); FLOPs are training
FLOPs (2 × multiply-adds, backward and every extra pass included). Rows are ordered and
labelled from the methods' declared facts (family, per-modality rows), never by name.
"""
from __future__ import annotations

from statistics import mean
from typing import Any, Sequence

from tabulate import tabulate

from bbench.methods.facts import Family
from bbench.methods.registry import METHODS, reference_method
from bbench.report.bench import BenchResult
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
