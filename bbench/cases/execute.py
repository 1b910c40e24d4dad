"""Running cases: a session-scoped cache of runs keyed on the resolved plan, references and inputs.

A LinearProbe case needs a finished Baseline run and the Unimodal runs of the same data;
"FLOPs above Baseline's" needs Baseline's run on the same data. Both come from the same
cache, keyed on (method, dataset, every override), so a Baseline case that already ran in
this process is reused, and a reference computed first is reused by the Baseline case.
Under pytest-xdist each worker has its own cache (a worker may recompute a reference).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bbench.cases.dsl import Above, Case, RunOf, RunsPerModality
from bbench.cases.expectations import Check, declared_checks, generic_checks
from bbench.cases.profiles import PlanContext, Profile, RunPlan
from bbench.config.resolve import deep_merge


@dataclass
class CaseOutcome:
    case: Case
    plan: RunPlan
    result: Any  # bbench.RunResult
    checks: list[Check]
    metrics: dict[str, Any]  # the case's reported metrics (tracked ones plus context)
    references: dict[str, str] = field(default_factory=dict)  # what -> record path
    reused: bool = False
    seconds: float = 0.0


class CaseRunner:
    """Plans and runs cases of one profile; one instance per pytest process."""

    def __init__(self, profile: Profile, ctx: PlanContext, out_dir: Path) -> None:
        self.profile = profile
        self.ctx = ctx
        self.out_dir = Path(out_dir)
        self.cache: dict[str, Any] = {}

    def plan(self, case: Case) -> RunPlan:
        return self.profile.plan(case, self.ctx)

    def run(self, plan: RunPlan, output_root: Path) -> tuple[Any, bool]:
        """The plan's RunResult: from the cache, or trained now under `output_root`."""
        key = plan.key()
        if key in self.cache:
            return self.cache[key], True
        import torch

        import bbench

        if plan.threads:
            torch.set_num_threads(plan.threads)
        output_root.mkdir(parents=True, exist_ok=True)
        result = bbench.run(plan.method, plan.dataset, output_root=str(output_root), **plan.kwargs())
        self.cache[key] = result
        return result, False

    def reference(self, plan: RunPlan, method: str, params: dict[str, Any]) -> Any:
        """`method` on the same data, budget and device as `plan` (the case's method params dropped)."""
        from bbench.methods.registry import METHODS

        cls = METHODS.get(method)
        label = method + "".join(f"_{v}" for v in params.values() if isinstance(v, (str, int)))
        ref = plan.for_method(cls.name, deep_merge(self.profile.method_params(cls), params), f"{label}-ref")
        return self.run(ref, self.out_dir / "_shared")[0]

    def inputs(self, case: Case, plan: RunPlan) -> tuple[dict[str, Any], dict[str, str]]:
        params: dict[str, Any] = {}
        used: dict[str, str] = {}
        for name, ref in case.inputs.items():
            if isinstance(ref, RunOf):
                result = self.reference(plan, ref.method, dict(ref.params))
                params[name] = str(result.run_dir)
                used[f"{name} ({ref.method})"] = str(result.record_path)
            elif isinstance(ref, RunsPerModality):
                dirs = []
                for m in case.modalities or case.dataset.modalities():
                    result = self.reference(plan, ref.method, {ref.param: m})
                    dirs.append(str(result.run_dir))
                    used[f"{name} ({ref.method} {m})"] = str(result.record_path)
                params[name] = tuple(dirs)
            else:  # pragma: no cover
                raise TypeError(f"unknown input {ref!r}")
        return params, used

    def execute(self, case: Case, plan: RunPlan) -> CaseOutcome:
        started = time.perf_counter()
        inputs, references = self.inputs(case, plan)
        plan = replace(plan, params=deep_merge(plan.params, inputs))
        result, reused = self.run(plan, self.out_dir / case.id)

        def reference_metrics(e: Above) -> dict[str, Any]:
            method = e.reference_name()
            ref = self.reference(plan, method, dict(e.params))
            references[f"{e.metric} reference ({method})"] = str(ref.record_path)
            return ref.metrics

        checks = generic_checks(result.metrics, result.history, result.extra)
        checks += declared_checks(case.expectations_for(self.profile.name), result.metrics,
                                  reference_metrics)
        return CaseOutcome(case, plan, result, checks, case_metrics(result), references, reused,
                           time.perf_counter() - started)


def case_metrics(result: Any) -> dict[str, Any]:
    """What a case reports: the tracked metrics (with the parameter count) and some context,
    including the evaluation split's size (`test_size`) that sample-aware tolerances need."""
    m = result.metrics
    out: dict[str, Any] = {}
    for key, value in m.items():
        if key in ("acc", "f1", "imbalance", "train_flops", "val_acc", "best_epoch", "train_samples",
                   "train_steps", "forward_flops_per_sample", "num_params", "wall_seconds") \
                or key.startswith(("acc_", "f1_", "probe_acc_", "probe_f1_", "unimodal_acc_")):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value
    if isinstance(m.get("shapley"), dict):
        out["shapley"] = dict(m["shapley"])
    if isinstance(m.get("test_size"), dict):  # one sample's worth in the baseline tolerances
        out["test_size"] = dict(m["test_size"])
    return out

