"""Terminal tables of the plugin: the case summary and the baseline comparison lines."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbench.plugin.utils import relative

if TYPE_CHECKING:
    from bbench.plugin.session import BBenchState


def summary_table(state: BBenchState) -> str:
    """The cases that ran (table), then the skipped ones grouped by reason."""
    from tabulate import tabulate

    rows, skipped = [], {}
    for r in state.results.values():
        if r.outcome == "skipped":
            skipped.setdefault(r.reason, []).append(r.case)
            continue
        m = r.payload.get("metrics", {})
        acc = _num(m.get("acc"))
        if acc == "" and any(k.startswith("probe_acc_") for k in m):
            acc = "probe " + "/".join(f"{v:.3f}" for k, v in m.items() if k.startswith("probe_acc_"))
        comp = r.payload.get("comparison", {}) or {}
        vs = comp.get("status", "") if not comp.get("error") else "no baseline"
        if vs == "regression":
            vs = "REGRESSION: " + ", ".join(d["metric"] for d in comp.get("deltas", [])
                                            if d["status"] in ("regression", "missing"))
        elif vs == "improvement":
            vs = "improved: " + ", ".join(d["metric"] for d in comp.get("deltas", [])
                                          if d["status"] == "improvement")
        rows.append([r.case, r.outcome, r.payload.get("data", ""), acc, _num(m.get("f1")),
                     _num(m.get("imbalance")), _flops(m.get("train_flops")), vs,
                     f"{r.duration:.1f}" if r.payload else ""])
    lines = []
    if rows:
        headers = ["case", "result", "data", "acc", "F1", "I", "train FLOPs", "vs baseline", "s"]
        lines.append(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    for reason, cases in skipped.items():
        shown = ", ".join(cases[:6]) + (f", … ({len(cases) - 6} more)" if len(cases) > 6 else "")
        lines.append(f"skipped {len(cases)}: {reason}: {shown}")
    return "\n".join(lines)


def comparison_lines(state: BBenchState) -> list[str]:
    from bbench.report.compare import Delta

    compared = [r for r in state.results.values() if (r.payload.get("comparison") or {}).get("source")]
    if not compared:
        return []
    root = state.config.rootpath
    sources = sorted({r.payload["comparison"]["source"] for r in compared})
    regressions, improvements, added = [], [], []
    for r in compared:
        comp = r.payload["comparison"]
        if comp.get("status") == "added":
            added.append(r.case)
        for d in comp.get("deltas", []):
            delta = Delta.from_json(d)
            if delta.failing:
                regressions.append(d["message"])
            elif delta.status == "improvement":
                improvements.append(d["message"])
    removed: list[str] = []
    everything = set().union(*state.declared.values()) if state.declared else set()
    for source in sources:
        table = state.baseline_table(Path(source))
        declared = state.declared.get(source, everything)  # a default baseline: its own file's cases
        if table is not None:
            removed += [c for c in table.cases if c not in declared]
    verb = "updating" if state.update else "compared with"
    lines = [f"baseline: {verb} {', '.join(relative(Path(s), root) for s in sources)}: "
             f"{len(regressions)} regression(s), {len(improvements)} improvement(s), "
             f"{len(added)} added, {len(removed)} removed"]
    lines += [f"  regression: {m}" for m in regressions]
    lines += [f"  improvement: {m}" for m in improvements]
    if added:
        lines.append("  added (no baseline entry): " + _some(added))
    if removed:
        lines.append("  removed (in the baseline, no longer declared): " + _some(removed))
    return lines


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _flops(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{unit}"
    return str(value)


def _some(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
