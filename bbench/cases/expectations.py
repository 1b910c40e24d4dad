"""Properties a case's result must have: generic ones for every case, declared ones per case.

Generic (every case, where the record has the quantity): metrics in range, Shapley
efficiency (Σ φ_m = v(all) − v(∅)), I ∈ [0, 1], a finite loss history, training FLOPs > 0.
"FLOPs above Baseline's" for methods that make extra passes, floors, ceilings and paper
values are declared (cases/cases_*.py) and checked here too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bbench.cases.dsl import Above, Ceiling, Expectation, Floor, PaperValue

UNIT_METRICS = ("acc", "f1", "val_acc", "source_acc")
UNIT_PREFIXES = ("acc_", "f1_", "probe_acc_", "probe_f1_", "unimodal_acc_")
EMPTY_SUBSET = "∅"


@dataclass(frozen=True)
class Check:
    """One property: what was checked, whether it held, observed against expected."""

    name: str
    ok: bool
    observed: Any = None
    expected: str = ""
    kind: str = "generic"  # generic | declared | baseline
    detail: str = ""

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        text = f"{status} [{self.kind}] {self.name}"
        if not self.ok:
            if self.detail:
                text += f": {self.detail}"
            else:
                text += f": observed {_fmt(self.observed)}, expected {self.expected}"
        return text

    def summary(self) -> str:
        """One line without the status: what failed, observed against expected."""
        if self.detail:
            return f"{self.name}: {self.detail}" if self.kind != "baseline" else self.detail
        return f"{self.name}: observed {_fmt(self.observed)}, expected {self.expected}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "observed": _jsonable(self.observed),
                "expected": self.expected, "kind": self.kind, "detail": self.detail}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def generic_checks(metrics: Mapping[str, Any], history: list[Mapping[str, Any]],
                   extra: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    # metrics in range
    unit = {k: v for k, v in metrics.items()
            if k in UNIT_METRICS or k.startswith(UNIT_PREFIXES)}
    bad = {k: v for k, v in unit.items() if not (_finite_number(v) and 0.0 <= v <= 1.0)}
    if bad:
        checks += [Check(f"{k} in [0, 1]", False, v, "a finite value in [0, 1]") for k, v in bad.items()]
    elif unit:
        checks.append(Check(f"metrics in [0, 1] ({len(unit)} values)", True))
    # Shapley
    shapley = metrics.get("shapley")
    if isinstance(shapley, Mapping) and shapley:
        bad_phi = {m: v for m, v in shapley.items() if not (_finite_number(v) and -1.0 <= v <= 1.0)}
        checks.append(Check("Shapley values in [-1, 1]", not bad_phi, bad_phi or None,
                            "every φ_m finite in [-1, 1]"))
        subsets = (extra.get("shapley") or {}).get("subset_accuracy") or {}
        full = "+".join(shapley)
        if full in subsets and EMPTY_SUBSET in subsets:
            total = sum(shapley.values())
            gain = subsets[full] - subsets[EMPTY_SUBSET]
            checks.append(Check("Shapley efficiency", abs(total - gain) <= 1e-9, total,
                                f"Σ φ_m = v({full}) − v(∅) = {gain:.6g}",
                                detail="" if abs(total - gain) <= 1e-9 else
                                f"Σ φ_m = {total:.10g} but v({full}) − v(∅) = {gain:.10g}"))
        else:
            checks.append(Check("Shapley efficiency", False, None, "subset accuracies in the record",
                                detail=f"the record has no subset accuracies for {full!r} and '∅'"))
    if "imbalance" in metrics:
        i = metrics["imbalance"]
        checks.append(Check("imbalance I in [0, 1]", _finite_number(i) and 0.0 <= i <= 1.0, i, "0 <= I <= 1"))
    # training history (runs that train through the Trainer)
    if "train_steps" in metrics:
        if not history:
            checks.append(Check("finite loss history", False, "no epochs", "one record per epoch"))
        else:
            bad_epochs = [(h.get("epoch"), k, h.get(k)) for h in history for k in ("train_loss", "val_loss")
                          if k in h and not _finite_number(h.get(k))]
            checks.append(Check("finite loss history", not bad_epochs,
                                bad_epochs[0] if bad_epochs else f"{len(history)} epochs",
                                "finite train_loss and val_loss in every epoch",
                                detail=(f"epoch {bad_epochs[0][0]}: {bad_epochs[0][1]} = {bad_epochs[0][2]}"
                                        if bad_epochs else "")))
    flops = metrics.get("train_flops")
    checks.append(Check("training FLOPs > 0", _finite_number(flops) and flops > 0, flops, "> 0"))
    return checks


def declared_checks(expectations: list[Expectation], metrics: Mapping[str, Any],
                    reference: Callable[[Above], Mapping[str, Any]]) -> list[Check]:
    """`reference(expectation)` returns the metrics of the reference run of an `Above`."""
    checks: list[Check] = []
    for e in expectations:
        value = metrics.get(e.metric)
        if not _finite_number(value):
            checks.append(Check(e.describe(), False, value, e.describe(), "declared",
                                detail=f"{e.metric} is not a finite number in the record ({value!r})"))
            continue
        if isinstance(e, Floor):
            checks.append(Check(e.describe(), value >= e.value, value, f">= {e.value:g}", "declared"))
        elif isinstance(e, Ceiling):
            checks.append(Check(e.describe(), value <= e.value, value, f"<= {e.value:g}", "declared"))
        elif isinstance(e, PaperValue):
            ok = value >= e.value - e.below and (e.above is None or value <= e.value + e.above)
            checks.append(Check(e.describe(), ok, value,
                                f"{e.source} {e.value:.4f} − {e.below:g}" +
                                (f" … + {e.above:g}" if e.above is not None else " or more"), "declared"))
        elif isinstance(e, Above):
            ref = reference(e).get(e.metric)
            ok = _finite_number(ref) and e.holds(value, ref)
            checks.append(Check(e.describe(), ok, value, f"{e.op} {e.reference_name()}'s {_fmt(ref)}", "declared"))
        else:  # pragma: no cover
            raise TypeError(f"unknown expectation {e!r}")
    return checks
