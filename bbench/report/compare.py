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

Tolerances: exact for counts (training FLOPs, parameters), absolute for accuracy, macro-F1
and the imbalance degree I. A metric with a `better` direction ("higher") that moves that
way beyond tolerance is an *improvement* (reported, never failing); the other way it is a
*regression*. A metric without a direction (I, FLOPs, parameter counts) that moves beyond
tolerance either way is a regression: it says the benchmark's behaviour changed.
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
class Tolerance:
    """How far a metric may move before it counts: `abs + rel·|baseline|` (0 = exact)."""

    abs: float = 0.0
    rel: float = 0.0
    better: Literal["higher", "lower"] | None = None

    def __post_init__(self) -> None:
        if self.abs < 0 or self.rel < 0:
            raise ValueError(f"tolerance must be >= 0 (abs={self.abs}, rel={self.rel})")
        if self.better not in (None, "higher", "lower"):
            raise ValueError(f"tolerance 'better' must be 'higher', 'lower' or null, not {self.better!r}")

    @property
    def exact(self) -> bool:
        return self.abs == 0 and self.rel == 0

    def allowed(self, reference: float) -> float:
        return self.abs + self.rel * abs(reference)

    def describe(self) -> str:
        if self.exact:
            text = "exact"
        else:
            parts = ([f"±{self.abs:g} absolute"] if self.abs else []) + (
                [f"±{self.rel * 100:g}% relative"] if self.rel else [])
            text = " + ".join(parts)
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
        if self.better:
            out["better"] = self.better
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "tolerance") -> "Tolerance":
        if data == "exact":
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object such as {{\"abs\": 0.05}} or \"exact\", "
                             f"got {data!r}")
        unknown = set(data) - {"abs", "rel", "better", "exact"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"allowed: abs, rel, better, exact")
        if data.get("exact") and (data.get("abs") or data.get("rel")):
            raise ValueError(f"{where}: 'exact' cannot be combined with abs or rel")
        return cls(float(data.get("abs", 0.0)), float(data.get("rel", 0.0)), data.get("better"))


# Patterns (fnmatch) of the tracked metrics and their default tolerances; first match wins.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "acc": Tolerance(abs=0.05, better="higher"),
    "f1": Tolerance(abs=0.05, better="higher"),
    "imbalance": Tolerance(abs=0.05),
    "probe_acc_*": Tolerance(abs=0.05, better="higher"),
    "probe_f1_*": Tolerance(abs=0.05, better="higher"),
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
        tol = self.tolerance.describe() if self.tolerance else "no tolerance"
        return (f"{self.case}: {self.metric} {verb}: observed {_fmt(self.observed)}, baseline "
                f"{_fmt(self.baseline)} (difference {_fmt_signed(self.difference)}; tolerance "
                f"{tol}){where}")

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "metric": self.metric, "baseline": self.baseline,
                "observed": self.observed, "status": self.status,
                "tolerance": self.tolerance.to_json() if self.tolerance else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Delta":
        tol = data.get("tolerance")
        return cls(data["case"], data["metric"], data.get("baseline"), data.get("observed"),
                   Tolerance.from_json(tol) if tol is not None else None, data["status"])


def compare_metrics(case: str, baseline: Mapping[str, Any], observed: Mapping[str, Any],
                    tolerances: Mapping[str, Tolerance]) -> list[Delta]:
    """Every tracked metric of one case: within tolerance, regressed, improved, missing or new."""
    deltas: list[Delta] = []
    for metric in sorted(set(baseline) | set(observed)):
        tol = tolerance_for(metric, tolerances)
        if tol is None:
            continue
        a, b = baseline.get(metric), observed.get(metric)
        if a is None and b is None:
            continue
        if b is None or (isinstance(b, float) and not math.isfinite(b)):
            deltas.append(Delta(case, metric, a, b, tol, "missing"))
            continue
        if a is None:
            deltas.append(Delta(case, metric, None, b, tol, "new"))
            continue
        deltas.append(Delta(case, metric, a, b, tol, _status(a, b, tol)))
    return deltas


def _status(a: float, b: float, tol: Tolerance) -> Status:
    diff = b - a
    # A tiny slack keeps "exactly at the tolerance" inside it despite float rounding.
    if abs(diff) <= tol.allowed(a) + 1e-12 * max(1.0, abs(a)):
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
        deltas += compare_metrics(case, reference, observed, a.tolerances_of(case))
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
    return table_from_json(data, str(path))


def table_from_json(data: Mapping[str, Any], source: str = "") -> Table:
    schema = data.get("schema")
    if schema == BASELINE_SCHEMA:
        tolerances = parse_tolerances(data.get("tolerances"), f"{source}: tolerances")
        cases: dict[str, dict[str, Any]] = {}
        per_case: dict[str, dict[str, Tolerance]] = {}
        for case, entry in (data.get("cases") or {}).items():
            cases[case] = dict(entry.get("metrics", {}))
            if entry.get("tolerances"):
                per_case[case] = parse_tolerances(entry["tolerances"], f"{source}: {case}: tolerances",
                                                  defaults=False)
        return Table(cases, tolerances, per_case, source, "baseline",
                     {k: data.get(k) for k in ("profile", "machine_info", "commit_info", "updated")})
    if schema == SESSION_SCHEMA:
        cases = {c["case"]: tracked_metrics(c.get("metrics", {})) for c in data.get("cases", [])
                 if c.get("metrics")}
        return Table(cases, dict(DEFAULT_TOLERANCES), {}, source, "session",
                     {k: data.get(k) for k in ("profile", "name", "machine_info", "commit_info", "datetime")})
    if schema == RUN_SCHEMA:
        spec = data.get("spec", {})
        case = f"{spec.get('method', '?')}-{spec.get('dataset', {}).get('name', '?')}"
        return Table({case: tracked_metrics(data.get("metrics", {}))}, dict(DEFAULT_TOLERANCES), {},
                     source, "record", {"environment": data.get("environment")})
    raise ValueError(f"{source or 'data'}: unknown result schema {schema!r}; expected a baseline "
                     f"({BASELINE_SCHEMA}), a saved session ({SESSION_SCHEMA}) or a run record "
                     f"({RUN_SCHEMA})")


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
                  meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The committed-baseline document (sorted cases, so a rewrite diffs cleanly)."""
    tolerances = tolerances or DEFAULT_TOLERANCES
    case_tolerances = case_tolerances or {}
    entries = {}
    for case in sorted(cases):
        entry: dict[str, Any] = {"metrics": {k: cases[case][k] for k in sorted(cases[case])}}
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
              d.tolerance.describe() if d.tolerance else "", d.status] for d in rows]))
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

