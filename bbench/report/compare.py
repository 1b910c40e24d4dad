"""A/B comparison of benchmark results with per-metric tolerances (regression tracking).

One comparison, three readers: the pytest plugin (`--bbench-compare` fails a case whose
metric regressed beyond tolerance), `tools/compare.py A.json B.json`, and anyone with two
result files. Standard library only: importing this module never imports torch.

A *table* is `{case id: {metric: value}}` plus where it came from. Three file kinds load
into one:

- a committed baseline (`cases/baselines/<profile>.json`, schema `bbench.baselines/1`),
  which also carries the tolerances;
- a saved session (`--bbench-save NAME` → `.bbench/<machine id>/<NNNN>_<NAME>.json`,
  schema `bbench.session/1`);
- a single run record (`record.json` of any run, schema `bbench.run/1`): one case named
  `<method>-<dataset>`.

Tolerances: exact for counts (training FLOPs, parameters); for accuracy, macro-F1 and the
imbalance degree I, ±0.05 absolute *or one test sample's worth*, whichever is larger: on a
12-sample miniature split one prediction flipping (which sample flips depends on the CPU's
floating-point paths) moves accuracy by 1/12 = 0.083, so a fixed ±0.05 would fail on a
different CPU with nothing wrong. One sample's worth depends on the metric and on the case's
evaluation split (`test_size`, stored beside each case in the baseline); see `sample_worth`
and docs/cases.md ("Sample-aware tolerances"). A metric with a `better` direction
("higher") that moves that way beyond tolerance is an *improvement* (reported, never
failing); the other way it is a *regression*. A metric without a direction (I, FLOPs,
parameter counts) that moves beyond tolerance either way is a regression: it says the
benchmark's behaviour changed.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

BASELINE_SCHEMA = "bbench.baselines/1"
SESSION_SCHEMA = "bbench.session/1"
RUN_SCHEMA = "bbench.run/1"

Status = Literal["ok", "regression", "improvement", "missing", "new"]


@dataclass(frozen=True)
class SampleWorth:
    """What one test sample's prediction is worth in one metric on one evaluation split."""

    value: float
    note: str  # how it was computed, e.g. "of 12 samples"


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move before it counts.

    Allowed difference: `max(abs + rel·|baseline|, samples · worth)`, where `worth` is one
    test sample's worth of that metric on the case's evaluation split (`sample_worth`); 0 in
    every field = exact. `samples` is the number of test-sample prediction changes the metric
    may absorb; without a known split size it contributes nothing. `why` is free text kept
    beside a loosened tolerance in the baseline file (not part of equality).
    """

    abs: float = 0.0
    rel: float = 0.0
    better: Literal["higher", "lower"] | None = None
    samples: int = 0
    why: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.abs < 0 or self.rel < 0:
            raise ValueError(f"tolerance must be >= 0 (abs={self.abs}, rel={self.rel})")
        if self.better not in (None, "higher", "lower"):
            raise ValueError(f"tolerance 'better' must be 'higher', 'lower' or null, not {self.better!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise ValueError(f"tolerance 'samples' must be a whole number >= 0, not {self.samples!r}")

    @property
    def exact(self) -> bool:
        return self.abs == 0 and self.rel == 0 and self.samples == 0

    def allowed(self, reference: float, worth: SampleWorth | None = None) -> float:
        fixed = self.abs + self.rel * abs(reference)
        if self.samples and worth is not None:
            return max(fixed, self.samples * worth.value)
        return fixed

    def describe(self, worth: SampleWorth | None = None) -> str:
        """E.g. `±0.05 absolute or 1 test sample's worth (±0.0833 of 12 samples), higher is better`."""
        if self.exact:
            text = "exact"
        else:
            fixed = " + ".join(([f"±{self.abs:g} absolute"] if self.abs else []) + (
                [f"±{self.rel * 100:g}% relative"] if self.rel else []))
            parts = [fixed] if fixed else []
            if self.samples:
                what = ("1 test sample's worth" if self.samples == 1
                        else f"{self.samples} test samples' worth")
                what += (f" (±{self.samples * worth.value:.4f} {worth.note})" if worth is not None
                         else " (test split size unknown: not applied)")
                parts.append(what)
            text = " or ".join(parts)
        if self.better:
            text += f", {self.better} is better"
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.exact:
            out["exact"] = True
        if self.abs:
            out["abs"] = self.abs
        if self.rel:
            out["rel"] = self.rel
        if self.samples:
            out["samples"] = self.samples
        if self.better:
            out["better"] = self.better
        if self.why:
            out["why"] = self.why
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "tolerance") -> "Tolerance":
        if data == "exact":
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object such as {{\"abs\": 0.05}} or \"exact\", "
                             f"got {data!r}")
        unknown = set(data) - {"abs", "rel", "samples", "better", "exact", "why"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"allowed: abs, rel, samples, better, exact, why")
        if data.get("exact") and (data.get("abs") or data.get("rel") or data.get("samples")):
            raise ValueError(f"{where}: 'exact' cannot be combined with abs, rel or samples")
        for key in ("abs", "rel"):
            if not _is_number(data.get(key, 0.0)):
                raise ValueError(f"{where}: {key!r} must be a number, not {data[key]!r}")
        samples = data.get("samples", 0)
        if isinstance(samples, float) and samples.is_integer():
            samples = int(samples)
        why = data.get("why", "")
        if not isinstance(why, str):
            raise ValueError(f"{where}: 'why' must be text, not {why!r}")
        try:
            return cls(float(data.get("abs", 0.0)), float(data.get("rel", 0.0)), data.get("better"),
                       samples, why)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


# One sample's worth, per metric kind (fnmatch patterns of the tracked metric names). Every
# such metric is computed on the case's whole test split, whose size the run record keeps
# as metrics["test_size"] = {"samples": n, "classes": C, "min_class_support": s}
# (bbench.metrics.classification.evaluation_size; s = the smallest positive class count).
#
# Accuracy (`acc`, `acc_<m>`, `probe_acc_<m>`, `unimodal_acc_<m>`): the fraction of n
# predictions that are right, so one changed prediction moves it by at most 1/n.
ACCURACY_LIKE = ("acc", "acc_*", "probe_acc_*", "unimodal_acc_*")
# Imbalance degree I: v(S) is the fused test accuracy with only the modalities in S
# present, so one prediction flip in one subset T moves v(T) alone, by δ with |δ| <= 1/n.
# φ_i = Σ_{S ∌ i} w(|S|) [v(S ∪ {i}) − v(S)] with w(k) = k!(M−k−1)!/M! <= 1/M: v(T) enters
# φ_i with weight +w(|T|−1) for i ∈ T and −w(|T|) for i ∉ T. A difference φ_i − φ_j thus
# moves by 0 (both in T or both out) or by (w(|T|−1) + w(|T|))·|δ| <= 2/(M·n) <= 1/n
# (M >= 2; with M = 1, I = 0 always). I is a mean of |φ_i − φ_j| over pairs, and
# ||x| − |y|| <= |x − y|, so I moves by at most 1/n too (exactly 1/n for M = 2, where
# I = |v({1}) − v({2})|).
IMBALANCE_LIKE = ("imbalance",)
# Macro-F1 (`f1`, `f1_<m>`, `probe_f1_<m>`): F1_c = 2·TP_c / (S_c + P_c), S_c the support
# (true count) and P_c the predicted count of class c; macro-F1 is the mean over all C
# classes (bbench.metrics.classification.macro_f1). Changing one prediction of a sample of
# true class a from b to b' touches at most two classes' F1 by more than nothing:
# - correct -> wrong (b = a): F1_a = 2TP/D becomes 2(TP−1)/(D−1) (D = S_a + P_a), a drop of
#   2(D − TP)/(D(D − 1)) <= 2/S_a (as S_a <= D and TP >= 1); F1_b' = 2TP'/D' becomes
#   2TP'/(D' + 1), a drop of 2TP'/(D'(D' + 1)) <= 1/(D' + 1) < 1/S_b' (TP' <= D'/2; 0 when
#   S_b' = 0). Wrong -> correct is the same move backwards.
# - wrong -> wrong (b ≠ a ≠ b'): TP_a and P_a stay; F1_b and F1_b' move by < 1/S_b, 1/S_b'.
# So the sum of the per-class changes is at most 2/S_a + 1/S_b <= 3/s, and macro-F1 (the
# mean over C) moves by at most 3/(C·s). tests/plugin/test_compare_tolerance.py checks this
# bound by brute force on random small label/prediction vectors.
F1_LIKE = ("f1", "f1_*", "probe_f1_*")


def sample_worth(metric: str, test_size: Mapping[str, Any] | None) -> SampleWorth | None:
    """One test sample's worth of `metric` on the split `test_size` describes (None: unknown)."""
    if not isinstance(test_size, Mapping):
        return None

    def count(key: str) -> int | None:
        value = test_size.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    n = count("samples")
    if n is None:
        return None
    if any(fnmatch.fnmatchcase(metric, p) for p in ACCURACY_LIKE + IMBALANCE_LIKE):
        return SampleWorth(1.0 / n, f"of {n} samples")
    if any(fnmatch.fnmatchcase(metric, p) for p in F1_LIKE):
        classes, support = count("classes"), count("min_class_support")
        if classes is None or support is None:
            return None
        return SampleWorth(3.0 / (classes * support),
                           f"of {n} samples: 3/(C·s), {classes} classes, smallest class {support}")
    return None


# Why the split-based metrics absorb two test samples (kept beside them in the baseline file).
# Measured: an Intel Xeon (AVX-512) and an AMD EPYC gave the same smoke results except one
# prediction on the 12-sample CREMA-D miniature split (1/12 = 0.083 of accuracy or I, which a
# fixed ±0.05 fails); forcing the AVX2 kernels on the Intel machine moved 2 of the 147 smoke
# cases by two predictions (PMR-CREMAD accuracy 0 -> 2/12, ReLearning-BalancedAV 2/6 -> 4/6),
# and ATen's scalar kernels moved 14 cases by two, none by more. The project's rule is a
# tolerance of at least one sample's worth; two is the largest move any CPU path has shown
# except in two smoke cases, which carry their own in the baseline file (docs/cases.md).
CPU_PATHS_WHY = ("test predictions may flip with the CPU's floating-point paths: one between an "
                 "Intel Xeon and an AMD EPYC, two when the kernels are forced to AVX2 or to "
                 "scalar code (docs/cases.md, Results across CPUs); on a 12-sample split two "
                 "are 2/12 = 0.17 > 0.05")

# Patterns (fnmatch) of the tracked metrics and their default tolerances; first match wins.
# Accuracy, macro-F1 and I: ±0.05, or two test samples' worth on small splits (CPU_PATHS_WHY;
# on the 300-sample mfeat split 2/300 is far below 0.05, so only the miniatures are loosened).
# Counts are exact: FLOPs come from shapes, parameters from the model.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "acc": Tolerance(abs=0.05, better="higher", samples=2, why=CPU_PATHS_WHY),
    "f1": Tolerance(abs=0.05, better="higher", samples=2, why=CPU_PATHS_WHY),
    "imbalance": Tolerance(abs=0.05, samples=2, why=CPU_PATHS_WHY),
    "probe_acc_*": Tolerance(abs=0.05, better="higher", samples=2, why=CPU_PATHS_WHY),
    "probe_f1_*": Tolerance(abs=0.05, better="higher", samples=2, why=CPU_PATHS_WHY),
    "train_flops": Tolerance(),
    "num_params": Tolerance(),
}


def tolerance_for(metric: str, tolerances: Mapping[str, Tolerance]) -> Tolerance | None:
    """The tolerance of `metric` (exact key first, then the first matching pattern)."""
    if metric in tolerances:
        return tolerances[metric]
    for pattern, tol in tolerances.items():
        if fnmatch.fnmatchcase(metric, pattern):
            return tol
    return None


def tracked_metrics(metrics: Mapping[str, Any],
                    tolerances: Mapping[str, Tolerance] = DEFAULT_TOLERANCES) -> dict[str, Any]:
    """The scalar metrics that regression tracking follows (those with a tolerance)."""
    return {k: v for k, v in metrics.items()
            if tolerance_for(k, tolerances) is not None and _is_number(v)}


@dataclass(frozen=True)
class Delta:
    """One metric of one case, baseline (A) against observed (B)."""

    case: str
    metric: str
    baseline: float | None
    observed: float | None
    tolerance: Tolerance | None
    status: Status
    worth: SampleWorth | None = None  # one test sample's worth of this metric on the case's split

    @property
    def allowed(self) -> float | None:
        """The difference the tolerance allows here (None without a tolerance or baseline)."""
        if self.tolerance is None or self.baseline is None:
            return None
        return self.tolerance.allowed(self.baseline, self.worth)

    def tolerance_text(self) -> str:
        return self.tolerance.describe(self.worth) if self.tolerance else "no tolerance"

    @property
    def difference(self) -> float | None:
        if self.baseline is None or self.observed is None:
            return None
        return self.observed - self.baseline

    @property
    def failing(self) -> bool:
        return self.status in ("regression", "missing")

    def message(self, source: str | None = None) -> str:
        """One line naming the case, the metric, both values and the tolerance."""
        where = f" [{source}]" if source else ""
        if self.status == "missing":
            return (f"{self.case}: {self.metric} is missing (baseline {_fmt(self.baseline)}, "
                    f"no value observed){where}")
        if self.status == "new":
            return f"{self.case}: {self.metric} = {_fmt(self.observed)} is new (no baseline value){where}"
        verb = {"regression": "regressed", "improvement": "improved", "ok": "within tolerance"}[self.status]
        if self.status == "regression" and (self.tolerance is None or self.tolerance.better is None):
            verb = "changed"  # no better direction (FLOPs, parameter counts, I): any move counts
        return (f"{self.case}: {self.metric} {verb}: observed {_fmt(self.observed)}, baseline "
                f"{_fmt(self.baseline)} (difference {_fmt_signed(self.difference)}; tolerance "
                f"{self.tolerance_text()}){where}")

    def to_json(self) -> dict[str, Any]:
        out = {"case": self.case, "metric": self.metric, "baseline": self.baseline,
               "observed": self.observed, "status": self.status,
               "tolerance": self.tolerance.to_json() if self.tolerance else None}
        if self.worth is not None:
            out["sample_worth"] = {"value": self.worth.value, "note": self.worth.note}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Delta":
        tol, worth = data.get("tolerance"), data.get("sample_worth")
        return cls(data["case"], data["metric"], data.get("baseline"), data.get("observed"),
                   Tolerance.from_json(tol) if tol is not None else None, data["status"],
                   SampleWorth(float(worth["value"]), str(worth.get("note", ""))) if worth else None)


def compare_metrics(case: str, baseline: Mapping[str, Any], observed: Mapping[str, Any],
                    tolerances: Mapping[str, Tolerance], *,
                    test_size: Mapping[str, Any] | None = None,
                    observed_test_size: Mapping[str, Any] | None = None) -> list[Delta]:
    """Every tracked metric of one case: within tolerance, regressed, improved, missing or new.

    `test_size` is the baseline's evaluation split (`{"samples", "classes",
    "min_class_support"}`), which sets one sample's worth for tolerances with `samples`;
    `observed_test_size` (the observed run's split) is used where the baseline lacks it.
    """
    deltas: list[Delta] = []
    for metric in sorted(set(baseline) | set(observed)):
        tol = tolerance_for(metric, tolerances)
        if tol is None:
            continue
        worth = None
        if tol.samples:
            worth = sample_worth(metric, test_size) or sample_worth(metric, observed_test_size)
        a, b = baseline.get(metric), observed.get(metric)
        if a is None and b is None:
            continue
        if b is None or (isinstance(b, float) and not math.isfinite(b)):
            deltas.append(Delta(case, metric, a, b, tol, "missing", worth))
            continue
        if a is None:
            deltas.append(Delta(case, metric, None, b, tol, "new", worth))
            continue
        deltas.append(Delta(case, metric, a, b, tol, _status(a, b, tol, worth), worth))
    return deltas


def _status(a: float, b: float, tol: Tolerance, worth: SampleWorth | None = None) -> Status:
    diff = b - a
    # A tiny slack keeps "exactly at the tolerance" inside it despite float rounding.
    if abs(diff) <= tol.allowed(a, worth) + 1e-12 * max(1.0, abs(a)):
        return "ok"
    if tol.better == "higher":
        return "improvement" if diff > 0 else "regression"
    if tol.better == "lower":
        return "improvement" if diff < 0 else "regression"
    return "regression"


@dataclass
class Table:
    """Tracked metrics per case, from one file (or one session)."""

    cases: dict[str, dict[str, Any]]
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    case_tolerances: dict[str, dict[str, Tolerance]] = field(default_factory=dict)
    source: str = ""
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # case -> its evaluation split ({"samples", "classes", "min_class_support"}), where known
    test_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tolerances_of(self, case: str) -> dict[str, Tolerance]:
        """The tolerances that apply to one case (its own entries first)."""
        own = self.case_tolerances.get(case)
        if not own:
            return self.tolerances
        return {**own, **{k: v for k, v in self.tolerances.items() if k not in own}}


@dataclass
class Report:
    """A against B: every delta, plus the cases only one side has."""

    a: str
    b: str
    deltas: list[Delta]
    added: list[str]  # in B only
    removed: list[str]  # in A only

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.failing]

    @property
    def improvements(self) -> list[Delta]:
        return [d for d in self.deltas if d.status == "improvement"]

    @property
    def ok(self) -> bool:
        return not self.regressions


def compare_tables(a: Table, b: Table) -> Report:
    """Compare B (new) against A (baseline), with A's tolerances.

    A single run record holds one case and lacks what only the plugin adds (the parameter
    count): against a record, the other side's extra cases and metrics are not reported.
    """
    deltas: list[Delta] = []
    common = [c for c in a.cases if c in b.cases]
    for case in common:
        observed = b.cases[case]
        reference = a.cases[case]
        if b.kind == "record":
            reference = {k: v for k, v in reference.items() if k in observed}
        if a.kind == "record":
            observed = {k: v for k, v in observed.items() if k in reference}
        deltas += compare_metrics(case, reference, observed, a.tolerances_of(case),
                                  test_size=a.test_sizes.get(case),
                                  observed_test_size=b.test_sizes.get(case))
    added = [c for c in b.cases if c not in a.cases] if a.kind != "record" else []
    removed = [c for c in a.cases if c not in b.cases] if b.kind != "record" else []
    if a.kind == "record" and b.kind == "record":
        added, removed = [c for c in b.cases if c not in a.cases], [c for c in a.cases if c not in b.cases]
    return Report(a.source, b.source, deltas, added=added, removed=removed)


# --- files ------------------------------------------------------------------------------------

def load_table(path: str | Path) -> Table:
    """A baseline, a saved session or a run record (a run directory works too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    if not path.is_file():
        raise FileNotFoundError(f"no result file at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text (JSON) file ({err})") from None
    return table_from_json(data, str(path))


def table_from_json(data: Mapping[str, Any], source: str = "") -> Table:
    """A table from a parsed file; ValueError (naming `source`) when it is not a valid one."""
    where = source or "data"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a JSON object with a 'schema' key, got "
                         f"{type(data).__name__}")
    schema = data.get("schema")
    if schema == BASELINE_SCHEMA:
        tolerances = parse_tolerances(data.get("tolerances"), f"{where}: tolerances")
        cases: dict[str, dict[str, Any]] = {}
        per_case: dict[str, dict[str, Tolerance]] = {}
        sizes: dict[str, dict[str, Any]] = {}
        entries = data.get("cases") or {}
        if not isinstance(entries, Mapping):
            raise ValueError(f"{where}: 'cases' must be an object of case id -> entry")
        for case, entry in entries.items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: {case}: expected an object with 'metrics', got {entry!r}")
            cases[case] = _metrics(entry.get("metrics", {}), f"{where}: {case}: metrics")
            if entry.get("tolerances"):
                per_case[case] = parse_tolerances(entry["tolerances"], f"{where}: {case}: tolerances",
                                                  defaults=False)
            if entry.get("test_size") is not None:  # absent in files written before it existed
                sizes[case] = _test_size(entry["test_size"], f"{where}: {case}: test_size")
        return Table(cases, tolerances, per_case, source, "baseline",
                     {k: data.get(k) for k in ("profile", "machine_info", "commit_info", "updated")},
                     test_sizes=sizes)
    if schema == SESSION_SCHEMA:
        entries = data.get("cases", [])
        if not isinstance(entries, list) or not all(isinstance(c, Mapping) and "case" in c
                                                    for c in entries):
            raise ValueError(f"{where}: 'cases' must be a list of objects with a 'case' key")
        cases, sizes = {}, {}
        for c in entries:
            metrics = c.get("metrics")
            if not metrics:
                continue
            if not isinstance(metrics, Mapping):
                raise ValueError(f"{where}: {c['case']}: 'metrics' must be an object")
            cases[c["case"]] = tracked_metrics(metrics)
            if isinstance(metrics.get("test_size"), Mapping):
                sizes[c["case"]] = dict(metrics["test_size"])
        return Table(cases, dict(DEFAULT_TOLERANCES), {}, source, "session",
                     {k: data.get(k) for k in ("profile", "name", "machine_info", "commit_info", "datetime")},
                     test_sizes=sizes)
    if schema == RUN_SCHEMA:
        spec = data.get("spec", {})
        metrics = data.get("metrics", {})
        if not isinstance(spec, Mapping) or not isinstance(metrics, Mapping):
            raise ValueError(f"{where}: 'spec' and 'metrics' must be objects")
        dataset = spec.get("dataset", {})
        case = f"{spec.get('method', '?')}-{dataset.get('name', '?') if isinstance(dataset, Mapping) else '?'}"
        sizes = {case: dict(metrics["test_size"])} if isinstance(metrics.get("test_size"), Mapping) else {}
        return Table({case: tracked_metrics(metrics)}, dict(DEFAULT_TOLERANCES), {},
                     source, "record", {"environment": data.get("environment")}, test_sizes=sizes)
    raise ValueError(f"{source or 'data'}: unknown result schema {schema!r}; expected a baseline "
                     f"({BASELINE_SCHEMA}), a saved session ({SESSION_SCHEMA}) or a run record "
                     f"({RUN_SCHEMA})")


def _metrics(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object of metric -> number, got {data!r}")
    bad = {k: v for k, v in data.items() if v is not None and not _is_number(v)}
    if bad:
        raise ValueError(f"{where}: not numbers: {bad!r}")
    return dict(data)


def _test_size(data: Any, where: str) -> dict[str, Any]:
    keys = ("samples", "classes", "min_class_support")
    if not isinstance(data, Mapping) or not all(
            isinstance(data.get(k), int) and not isinstance(data.get(k), bool) and data[k] >= 0
            for k in keys):
        raise ValueError(f"{where}: expected {{\"samples\": n, \"classes\": C, "
                         f"\"min_class_support\": s}} (whole numbers), got {data!r}")
    return dict(data)


def parse_tolerances(data: Any, where: str = "tolerances", defaults: bool = True) -> dict[str, Tolerance]:
    """`{"acc": {"abs": 0.05, "better": "higher"}, "train_flops": "exact"}`, over the defaults."""
    out = dict(DEFAULT_TOLERANCES) if defaults else {}
    if data is None:
        return out
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object of metric -> tolerance, got {data!r}")
    parsed = {metric: Tolerance.from_json(tol, f"{where}: {metric}") for metric, tol in data.items()}
    return {**parsed, **{k: v for k, v in out.items() if k not in parsed}}


def baseline_json(cases: Mapping[str, Mapping[str, Any]], *, profile: str,
                  tolerances: Mapping[str, Tolerance] | None = None,
                  case_tolerances: Mapping[str, Mapping[str, Tolerance]] | None = None,
                  meta: Mapping[str, Any] | None = None,
                  test_sizes: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The committed-baseline document (sorted cases, so a rewrite diffs cleanly).

    `test_sizes` (case -> evaluation split) is stored beside each case's metrics: one sample's
    worth in the sample-aware tolerances is computed from the baseline's split.
    """
    tolerances = tolerances or DEFAULT_TOLERANCES
    case_tolerances = case_tolerances or {}
    test_sizes = test_sizes or {}
    entries = {}
    for case in sorted(cases):
        entry: dict[str, Any] = {"metrics": {k: cases[case][k] for k in sorted(cases[case])}}
        if test_sizes.get(case):
            entry["test_size"] = dict(test_sizes[case])
        if case_tolerances.get(case):
            entry["tolerances"] = {m: t.to_json() for m, t in case_tolerances[case].items()}
        entries[case] = entry
    return {"schema": BASELINE_SCHEMA, "profile": profile, **dict(meta or {}),
            "tolerances": {m: t.to_json() for m, t in tolerances.items()}, "cases": entries}


# --- text -------------------------------------------------------------------------------------

def format_report(report: Report, *, show_ok: bool = False) -> str:
    """The A/B report: regressions, improvements, cases added and removed, and a metric table."""
    lines = [f"A (baseline): {report.a}", f"B (observed): {report.b}"]
    compared = {d.case for d in report.deltas}
    lines.append(f"{len(compared)} case(s) compared, {len(report.regressions)} regression(s), "
                 f"{len(report.improvements)} improvement(s), {len(report.added)} added, "
                 f"{len(report.removed)} removed")
    if report.regressions:
        lines.append("")
        lines.append("Regressions beyond tolerance:")
        lines += [f"  {d.message()}" for d in report.regressions]
    if report.improvements:
        lines.append("")
        lines.append("Improvements beyond tolerance (update the baseline to keep them):")
        lines += [f"  {d.message()}" for d in report.improvements]
    if report.added:
        lines.append("")
        lines.append("Cases added (in B, not in A): " + ", ".join(report.added))
    if report.removed:
        lines.append("")
        lines.append("Cases removed (in A, not in B): " + ", ".join(report.removed))
    rows = [d for d in report.deltas if show_ok or d.status != "ok"]
    if rows:
        lines.append("")
        lines.append(_table(
            ["case", "metric", "A", "B", "B - A", "tolerance", "status"],
            [[d.case, d.metric, _fmt(d.baseline), _fmt(d.observed), _fmt_signed(d.difference),
              d.tolerance_text() if d.tolerance else "", d.status] for d in rows]))
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    try:
        from tabulate import tabulate
    except ImportError:  # pragma: no cover - tabulate is a dependency of bbench
        return "\n".join("  ".join(map(str, r)) for r in [headers, *rows])
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1e4):
        return f"{int(value):d}"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.6g}"


def _fmt_signed(value: float | None) -> str:
    if value is None:
        return "—"
    text = _fmt(value)
    return text if text.startswith("-") else f"+{text}"

