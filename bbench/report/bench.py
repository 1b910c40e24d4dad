"""`bench`: every registered method on one dataset, and the paper-style comparison table.

The plan is read from the methods' declared facts (bbench/methods/facts.py), never from
their names: methods without input runs first, in family order (reference rows, then the
four balancing families), a `per_modality` method once per modality; then the methods
that declare input runs (LinearProbe), whose inputs the runner finds among the runs just
made (same spec hash under the bench directory) instead of training them again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bbench.config.resolve import resolve_spec
from bbench.data.registry import DATASETS, resolve_modalities
from bbench.methods.registry import METHODS, methods_in_table_order, reference_method
from bbench.results.files import write_json
from bbench.results.record import RunResult
from bbench.runner import run


@dataclass
class BenchResult:
    dataset: str
    modalities: tuple[str, ...]
    runs: list[RunResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it did not run
    out_dir: Path | None = None
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class PlannedRun:
    label: str
    method: str
    params: dict[str, Any]


def plan_bench(modalities: Sequence[str], selected: Sequence[str] | None = None
               ) -> tuple[list[PlannedRun], dict[str, str]]:
    """The runs of a bench, in order, and the methods left out with the reason.

    `selected` narrows the balancing families; reference rows and evaluation procedures
    always run (they are what the balancing rows are read against).
    """
    chosen = set(methods_in_table_order(selected)) if selected else None
    plan: list[PlannedRun] = []
    skipped: dict[str, str] = {}
    ordered = methods_in_table_order()
    for name in [n for n in ordered if not METHODS.get(n).inputs] + \
                [n for n in ordered if METHODS.get(n).inputs]:
        cls = METHODS.get(name)
        if chosen is not None and cls.family.balancing and name not in chosen:
            continue
        n = len(modalities)
        if cls.modality_fit(n) is not None:
            skipped[name] = (f"needs {cls.min_modalities} to {cls.max_modalities or 'any number of'} "
                             f"modalities; this bench has {n}")
            continue
        if cls.per_modality:
            plan += [PlannedRun(cls.label_for({cls.per_modality: m}), name, {cls.per_modality: m})
                     for m in modalities]
        else:
            plan.append(PlannedRun(name, name, {}))
    return plan, skipped


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
              on_run: Callable[[int, int, str, RunResult | None, float], None] | None = None,
              seeds: int = 1) -> BenchResult:
    """Run the whole comparison; `on_run(i, n, label, result, seconds)` reports progress.

    An override key `Method.key` applies to that method's runs only (e.g.
    `LinearProbe.probe_epochs`); every other override applies to all runs. With `seeds`
    N > 1 the whole plan runs N times, with training seeds s, s+1, ..., s+N-1 where s is the
    run seed (`--seed`, default the preset's): consecutive seeds, so a bench with more seeds
    extends one with fewer, and every method sees the same seeds (the pairing the paired
    statistics rely on). Each seed's plan runs in full before the next, so an input run
    (LinearProbe's Baseline) of the same seed already exists when it is needed.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    overrides, per_method = split_overrides(overrides or {})
    base = resolve_spec(reference_method(), dataset, overrides)
    entry = DATASETS.get(base.dataset.name)
    modalities = resolve_modalities(entry, base.dataset.modalities)
    root = Path(out_dir) if out_dir else Path(base.output_root) / f"bench-{entry.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"bench directory {root} already holds results; choose another --out")
    plan, skipped = plan_bench(modalities, methods)
    seed_list = tuple(base.train.seed + i for i in range(seeds))
    common = {k: v for k, v in overrides.items() if k not in ("seed", "train.seed")}
    result = BenchResult(entry.name, modalities, skipped=skipped, out_dir=root, seeds=seed_list)
    jobs = [(seed, planned) for seed in seed_list for planned in plan]
    for i, (seed, planned) in enumerate(jobs):
        label = planned.label if seeds == 1 else f"{planned.label} (seed {seed})"
        started = time.perf_counter()
        if on_run:
            on_run(i, len(jobs), label, None, 0.0)
        record = run(planned.method, entry.name, **{**common, **per_method.get(planned.method, {}),
                                                    **planned.params, "seed": seed,
                                                    "output_root": str(root)})
        result.runs.append(record)
        if on_run:
            on_run(i, len(jobs), label, record, time.perf_counter() - started)
    write_json(root / "bench.json", {
        "dataset": entry.name, "modalities": list(modalities), "seeds": list(seed_list),
        "runs": [str(r.run_dir) for r in result.runs], "skipped": skipped}, "bench index")
    return result
