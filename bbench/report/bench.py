"""`bench`: every registered method on one dataset, and the paper-style comparison table.

Order: Unimodal for each modality, Baseline, every balancing method, then LinearProbe on
the Baseline run (with the Unimodal runs beside it, the paper's Figure 2 question).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bbench.config.resolve import resolve_spec
from bbench.data.registry import DATASETS, resolve_modalities
from bbench.methods.registry import METHODS
from bbench.results.files import write_json
from bbench.results.record import RunResult
from bbench.runner import run

FAMILY_ORDER = ("Data", "Feed-forward", "Objective", "Optimization")


@dataclass
class BenchResult:
    dataset: str
    modalities: tuple[str, ...]
    runs: list[RunResult] = field(default_factory=list)
    probe: RunResult | None = None
    out_dir: Path | None = None


def balancing_methods(selected: Sequence[str] | None = None) -> list[str]:
    """Registered methods of the four families, in family then registration order."""
    names = [METHODS.canonical(n) for n in selected] if selected else list(METHODS)
    ordered = []
    for family in FAMILY_ORDER:
        ordered += [n for n in names if METHODS.get(n).family == family]
    return ordered


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Separate `Method.key` overrides (by canonical method name) from the common ones."""
    common: dict[str, Any] = {}
    per_method: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest and head in METHODS:
            per_method.setdefault(METHODS.canonical(head), {})[rest] = value
        else:
            common[key] = value
    return common, per_method


def run_bench(dataset: str, methods: Sequence[str] | None = None,
              overrides: Mapping[str, Any] | None = None, out_dir: str | Path | None = None,
              on_run: Callable[[int, int, str, RunResult | None, float], None] | None = None
              ) -> BenchResult:
    """Run the whole comparison; `on_run(i, n, label, result, seconds)` reports progress.

    An override key `Method.key` applies to that method's runs only (e.g.
    `LinearProbe.probe_epochs`); every other override applies to all runs.
    """
    overrides, per_method = split_overrides(overrides or {})
    base = resolve_spec("Baseline", dataset, overrides)
    entry = DATASETS.get(base.dataset.name)
    modalities = resolve_modalities(entry, base.dataset.modalities)
    root = Path(out_dir) if out_dir else Path(base.output_root) / f"bench-{entry.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"bench directory {root} already holds results; choose another --out")
    result = BenchResult(entry.name, modalities, out_dir=root)
    plan: list[tuple[str, str, dict[str, Any]]] = [
        (f"Unimodal-{m}", "Unimodal", {"modality": m}) for m in modalities]
    plan.append(("Baseline", "Baseline", {}))
    plan += [(name, name, {}) for name in balancing_methods(methods)]
    total = len(plan) + 1
    for i, (label, method, params) in enumerate(plan):
        started = time.perf_counter()
        if on_run:
            on_run(i, total, label, None, 0.0)
        record = run(method, entry.name, **{**overrides, **per_method.get(method, {}), **params,
                                            "output_root": str(root)})
        result.runs.append(record)
        if on_run:
            on_run(i, total, label, record, time.perf_counter() - started)
    baseline = next(r for r in result.runs if r.method == "Baseline")
    unimodal = [str(r.run_dir) for r in result.runs if r.method == "Unimodal"]
    started = time.perf_counter()
    if on_run:
        on_run(total - 1, total, "LinearProbe", None, 0.0)
    result.probe = run("LinearProbe", entry.name, **{**overrides, **per_method.get("LinearProbe", {}),
                                                     "output_root": str(root),
                                                     "source_run": str(baseline.run_dir),
                                                     "unimodal_runs": unimodal})
    if on_run:
        on_run(total - 1, total, "LinearProbe", result.probe, time.perf_counter() - started)
    write_json(root / "bench.json", {
        "dataset": entry.name, "modalities": list(modalities),
        "runs": [str(r.run_dir) for r in result.runs], "probe": str(result.probe.run_dir)},
        "bench index")
    return result
