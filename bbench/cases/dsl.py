"""The case DSL: typed declarations of benchmark cases, read from `cases/cases_*.py`.

A declaration file builds a list `CASES` from four kinds of objects:

- `grid(...)`: every registered method × the declared datasets (Unimodal expanded into one
  row per modality, methods that cannot apply to a dataset declared as skipped rows);
- `case(...)`: one extra case (e.g. a modality subset) on a declared dataset;
- `refine(pattern, ...)`: add expectations, parameters, overrides or a skip to the cases whose
  id matches a glob pattern (optionally only for some profiles);
- datasets are declared with `dataset(...)` (data that needs no root, e.g. the embedded mfeat)
  or `paper_dataset(...)` (needs a data root in the `paper` profile; a generated miniature or a
  synthetic stand-in in `smoke`).

Nothing here imports torch: a declaration file is plain data until the plugin expands it.
Case ids are `<method token>-<dataset token>`, tokens in [A-Za-z0-9_]; `-k` selects on them.
"""
from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

from bbench.config.resolve import deep_merge

ALL = "*"
TOKEN = re.compile(r"^[A-Za-z0-9_]+$")
CASE_ID = re.compile(r"^[A-Za-z0-9_]+-[A-Za-z0-9_]+$")
PROFILES = ("smoke", "quick", "paper")


class DeclarationError(ValueError):
    """A case declaration is invalid (bad token, duplicate id, unknown profile, ...)."""


@dataclass(frozen=True)
class Origin:
    """Where a declaration was written (for `reportinfo` and error messages)."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def _origin() -> Origin:
    """The first frame outside this package: the declaration file's line."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("bbench.cases"):
        frame = frame.f_back
    if frame is None:  # pragma: no cover
        return Origin("<unknown>", 0)
    return Origin(frame.f_code.co_filename, frame.f_lineno)


def _profiles(profiles: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if profiles is None:
        return None
    names = (profiles,) if isinstance(profiles, str) else tuple(profiles)
    unknown = [p for p in names if p not in PROFILES]
    if unknown:
        raise DeclarationError(f"unknown profile {unknown[0]!r}; profiles: {', '.join(PROFILES)}")
    return names


def _applies(profiles: tuple[str, ...] | None, profile: str) -> bool:
    return profiles is None or profile in profiles


# --- expectations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Floor:
    """observed `metric` >= value."""

    metric: str
    value: float
    profiles: tuple[str, ...] | None = None

    def describe(self) -> str:
        return f"{self.metric} >= {self.value:g}"


@dataclass(frozen=True)
class Ceiling:
    """observed `metric` <= value."""

    metric: str
    value: float
    profiles: tuple[str, ...] | None = None

    def describe(self) -> str:
        return f"{self.metric} <= {self.value:g}"


@dataclass(frozen=True)
class PaperValue:
    """A published value (fraction) with tolerances: value - below <= observed [<= value + above]."""

    metric: str
    value: float
    below: float
    above: float | None = None
    source: str = "paper"
    profiles: tuple[str, ...] | None = ("paper",)

    def describe(self) -> str:
        upper = f" <= {self.value + self.above:.4f}" if self.above is not None else ""
        return (f"{self.metric} >= {self.value - self.below:.4f} ({self.source}: {self.value:.4f}, "
                f"tolerance {self.below:g} below{f', {self.above:g} above' if self.above is not None else ''})"
                f"{upper}")


@dataclass(frozen=True)
class Above:
    """observed `metric` > (or, with op "<", below) the same metric of the `reference` method
    run on the same data and budget."""

    metric: str
    reference: str = ""  # empty: the reference method (the one declaring comparison_reference)
    params: Mapping[str, Any] = field(default_factory=dict)
    profiles: tuple[str, ...] | None = None
    op: Literal[">", "<"] = ">"

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.reference_name()}'s {self.metric} on the same data"

    def reference_name(self) -> str:
        """The method compared with: the declared one, or the registry's reference method."""
        if self.reference:
            return self.reference
        from bbench.methods.registry import reference_method  # imports torch: only when run

        return reference_method()

    def holds(self, value: float, reference: float) -> bool:
        return value > reference if self.op == ">" else value < reference


Expectation = Union[Floor, Ceiling, PaperValue, Above]


def floor(metric: str, value: float, *, profiles: Iterable[str] | str | None = None) -> Floor:
    return Floor(metric, float(value), _profiles(profiles))


def ceiling(metric: str, value: float, *, profiles: Iterable[str] | str | None = None) -> Ceiling:
    return Ceiling(metric, float(value), _profiles(profiles))


def paper(metric: str, percent: float, *, below: float = 5.0, above: float | None = None,
          source: str = "paper Table 2", profiles: Iterable[str] | str | None = ("paper",)) -> PaperValue:
    """A paper number as printed (percent) with tolerances in percentage points."""
    return PaperValue(metric, percent / 100.0, below / 100.0,
                      None if above is None else above / 100.0, source, _profiles(profiles))


def above(metric: str, reference: str = "", *, params: Mapping[str, Any] | None = None,
          profiles: Iterable[str] | str | None = None) -> Above:
    """observed `metric` > `reference`'s on the same data (e.g. training FLOPs above Baseline's)."""
    return Above(metric, reference, dict(params or {}), _profiles(profiles), ">")


def below(metric: str, reference: str = "", *, params: Mapping[str, Any] | None = None,
          profiles: Iterable[str] | str | None = None) -> Above:
    """observed `metric` < `reference`'s on the same data (e.g. imbalance below Baseline's)."""
    return Above(metric, reference, dict(params or {}), _profiles(profiles), "<")


# --- inputs from other runs -------------------------------------------------------------------

@dataclass(frozen=True)
class RunOf:
    """A parameter that is the run directory of `method` on the same data and budget."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunsPerModality:
    """A parameter that is a tuple of run directories: `method` once per modality of the case."""

    method: str
    param: str = "modality"


Ref = Union[RunOf, RunsPerModality]


def run_of(method: str, **params: Any) -> RunOf:
    return RunOf(method, params)


def runs_per_modality(method: str, param: str = "modality") -> RunsPerModality:
    return RunsPerModality(method, param)


# --- datasets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StandIn:
    """A synthetic stand-in for a dataset whose miniature is not available yet.

    Same modality names and class count as the real dataset (datasets.md §0.1/§1); the
    informativeness per modality follows the paper's unimodal ranking, so the imbalance
    has the right direction.
    """

    modalities: tuple[str, ...]
    num_classes: int
    informativeness: Mapping[str, float] = field(default_factory=dict)
    dims: int = 16
    per_class: tuple[int, int, int] = (8, 2, 4)  # train, val, test samples per class
    minimum: tuple[int, int, int] = (128, 32, 64)  # at least this many samples per split

    def overrides(self, modalities: Sequence[str] | None = None) -> dict[str, Any]:
        """`bbench.run` overrides of the `synthetic` dataset that mimic this one."""
        chosen = tuple(modalities or self.modalities)
        unknown = [m for m in chosen if m not in self.modalities]
        if unknown:
            raise DeclarationError(f"stand-in: unknown modality {unknown[0]!r}; "
                                   f"available: {', '.join(self.modalities)}")
        k = self.num_classes
        n = [max(lo, per * k) for per, lo in zip(self.per_class, self.minimum)]
        return {"modalities": chosen, "dataset.options": {
            "num_classes": k, "dims": self.dims,
            "informativeness": tuple(float(self.informativeness.get(m, 0.5)) for m in chosen),
            "n_train": n[0], "n_val": n[1], "n_test": n[2]}}


@dataclass(frozen=True)
class DatasetDecl:
    """A dataset of the grid: registry id, id token and per-profile settings.

    `settings[profile]` are `bbench.run` overrides for that profile; a profile without an
    entry skips the dataset's cases with `reasons[profile]` (or a default reason).
    `kind` is "embedded" (no data root needed) or "paper" (real data under the data root;
    miniature or stand-in in smoke).
    """

    name: str
    token: str
    kind: Literal["embedded", "paper"] = "embedded"
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    standin: StandIn | None = None
    origin: Origin = field(default=Origin("<unknown>", 0), compare=False)
    explicit_modalities: tuple[str, ...] | None = None  # a subset/order of the registered ones

    def __post_init__(self) -> None:
        if not TOKEN.match(self.token):
            raise DeclarationError(f"dataset {self.name}: token {self.token!r} must match "
                                   f"[A-Za-z0-9_]+ (it becomes part of case ids)")
        for p in (*self.settings, *self.reasons):
            _profiles(p)

    def modalities(self) -> tuple[str, ...]:
        """The declared modalities, else the registry's (canonical order), else the stand-in's."""
        from bbench.data.registry import DATASETS

        if self.explicit_modalities:
            return self.explicit_modalities
        if self.name in DATASETS:
            return tuple(DATASETS.get(self.name).modalities)
        if self.standin is not None:
            return self.standin.modalities
        raise DeclarationError(f"dataset {self.name!r} is not registered and has no stand-in: its "
                               f"modalities are unknown")


def dataset(name: str, token: str, *, smoke: Mapping[str, Any] | None = None,
            quick: Mapping[str, Any] | None = None, paper: Mapping[str, Any] | None = None,
            modalities: Sequence[str] | None = None,
            reasons: Mapping[str, str] | None = None) -> DatasetDecl:
    """A dataset that needs no data root (the embedded mfeat): overrides per profile.

    `paper` defaults to {} (the dataset's own preset); smoke and quick are skipped unless given.
    `modalities` picks a subset or order of the registered modalities (or names, for data
    with open modality names such as `synthetic`).
    """
    settings = {p: dict(v) for p, v in (("smoke", smoke), ("quick", quick),
                                        ("paper", {} if paper is None else paper)) if v is not None}
    return DatasetDecl(name, token, "embedded", settings, dict(reasons or {}), None, _origin(),
                       tuple(modalities) if modalities else None)


def paper_dataset(name: str, token: str, *, modalities: Sequence[str], num_classes: int,
                  informativeness: Mapping[str, float] | None = None,
                  smoke: Mapping[str, Any] | None = None, quick: Mapping[str, Any] | None = None,
                  paper: Mapping[str, Any] | None = None,
                  reasons: Mapping[str, str] | None = None) -> DatasetDecl:
    """A paper dataset: real data in `paper`, its miniature (or a stand-in) in `smoke`.

    `smoke` holds the budget (epochs, batch size) for the miniature/stand-in runs.
    """
    settings = {p: dict(v) for p, v in (("smoke", smoke or {}), ("quick", quick),
                                        ("paper", paper or {})) if v is not None}
    standin = StandIn(tuple(modalities), int(num_classes), dict(informativeness or {}))
    return DatasetDecl(name, token, "paper", settings, dict(reasons or {}), standin, _origin())


# --- cases ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """Method parameters and run overrides that apply in some profiles (None = all)."""

    params: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    profiles: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Case:
    """One concrete benchmark case: method × dataset (× modality), its settings and expectations."""

    id: str
    method: str
    dataset: DatasetDecl
    layers: tuple[Layer, ...] = ()
    modalities: tuple[str, ...] | None = None
    modality: str | None = None  # the per-modality row's modality (Unimodal)
    inputs: Mapping[str, Ref] = field(default_factory=dict)
    expect: tuple[Expectation, ...] = ()
    skip: str | None = None
    family: str = ""
    origin: Origin = field(default=Origin("<unknown>", 0), compare=False)

    def __post_init__(self) -> None:
        if not CASE_ID.match(self.id):
            raise DeclarationError(f"case id {self.id!r} must be <method token>-<dataset token> with "
                                   f"tokens in [A-Za-z0-9_] ({self.origin})")

    def params_for(self, profile: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for layer in self.layers:
            if _applies(layer.profiles, profile):
                out = deep_merge(out, layer.params)
        return out

    def overrides_for(self, profile: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for layer in self.layers:
            if _applies(layer.profiles, profile):
                out = deep_merge(out, layer.overrides)
        return out

    def expectations_for(self, profile: str) -> list[Expectation]:
        return [e for e in self.expect if _applies(e.profiles, profile)]


@dataclass(frozen=True)
class CaseDecl:
    """`case(...)`: one case on a declared dataset, outside the grid."""

    method: str
    dataset: DatasetDecl
    params: Mapping[str, Any]
    overrides: Mapping[str, Any]
    modalities: tuple[str, ...] | None
    expect: tuple[Expectation, ...]
    skip: str | None
    id: str | None
    inputs: Mapping[str, Ref]
    origin: Origin


def case(method: str, dataset: DatasetDecl, *, params: Mapping[str, Any] | None = None,
         overrides: Mapping[str, Any] | None = None, modalities: Sequence[str] | None = None,
         expect: Sequence[Expectation] = (), skip: str | None = None, id: str | None = None,
         inputs: Mapping[str, Ref] | None = None) -> CaseDecl:
    """An extra case. With `modalities` (a subset), the id is `<Method>_<m1>_<m2>-<dataset>`."""
    if not isinstance(dataset, DatasetDecl):
        raise DeclarationError(f"case({method!r}, ...): dataset must be a declared dataset "
                               f"(dataset(...) or paper_dataset(...)), not {dataset!r}")
    return CaseDecl(method, dataset, dict(params or {}), dict(overrides or {}),
                    tuple(modalities) if modalities else None, tuple(expect), skip, id,
                    dict(inputs or {}), _origin())


@dataclass(frozen=True)
class Refine:
    """`refine(pattern, ...)`: amend every case whose id matches the glob `pattern`."""

    pattern: str
    params: Mapping[str, Any]
    overrides: Mapping[str, Any]
    expect: tuple[Expectation, ...]
    skip: str | None
    profiles: tuple[str, ...] | None
    optional: bool
    origin: Origin
    exclude: tuple[str, ...] = ()

    def matches(self, case_id: str) -> bool:
        return (fnmatch.fnmatchcase(case_id, self.pattern)
                and not any(fnmatch.fnmatchcase(case_id, p) for p in self.exclude))

    def apply(self, c: Case) -> Case:
        layers = c.layers
        if self.params or self.overrides:
            layers = (*layers, Layer(dict(self.params), dict(self.overrides), self.profiles))
        return replace(c, layers=layers, expect=c.expect + self.expect,
                       skip=self.skip if self.skip is not None else c.skip)


def refine(pattern: str, *, params: Mapping[str, Any] | None = None,
           overrides: Mapping[str, Any] | None = None, expect: Sequence[Expectation] = (),
           skip: str | None = None, profiles: Iterable[str] | str | None = None,
           exclude: Sequence[str] | str = (), optional: bool = False) -> Refine:
    """Amend the cases matching `pattern` (glob on the id, e.g. "*-mfeat", "LinearProbe-*")
    and none of the `exclude` patterns.

    `profiles` limits `params`/`overrides` to those profiles (expectations carry their own).
    A pattern that matches no case is a declaration error unless `optional`.
    """
    return Refine(pattern, dict(params or {}), dict(overrides or {}), tuple(expect), skip,
                  _profiles(profiles), optional, _origin(),
                  (exclude,) if isinstance(exclude, str) else tuple(exclude))


@dataclass(frozen=True)
class Grid:
    """`grid(...)`: methods × datasets; see `grid`."""

    datasets: tuple[DatasetDecl, ...]
    methods: tuple[str, ...] | str
    exclude_datasets: Mapping[str, str]
    undeclared: Literal["skip", "ignore"]
    per_modality: Mapping[str, str]
    inputs: Mapping[str, Mapping[str, Ref]]
    params: Mapping[str, Mapping[str, Any]]
    expect: Mapping[str, tuple[Expectation, ...]]
    skip: Mapping[tuple[str, str], str]
    origin: Origin


def grid(*, datasets: Sequence[DatasetDecl], methods: Sequence[str] | str = ALL,
         exclude_datasets: Mapping[str, str] | None = None,
         undeclared: Literal["skip", "ignore"] = "skip",
         per_modality: Mapping[str, str] | None = None,
         inputs: Mapping[str, Mapping[str, Ref]] | None = None,
         params: Mapping[str, Mapping[str, Any]] | None = None,
         expect: Mapping[str, Sequence[Expectation]] | None = None,
         skip: Mapping[tuple[str, str], str] | None = None) -> Grid:
    """Every method (ALL = every registered one, now and later) × every declared dataset.

    - `exclude_datasets`: registered datasets deliberately left out, each with its reason.
      A registered dataset neither declared nor excluded gets skipped rows naming what to do
      (`undeclared="skip"`), so a new dataset is never silently absent.
    - `per_modality`: methods run once per modality, {method: parameter}, e.g.
      {"Unimodal": "modality"} gives the rows `Unimodal_audio-CREMAD`, `Unimodal_visual-CREMAD`.
    - `inputs`: parameters filled from other runs, e.g. LinearProbe's
      {"source_run": run_of("Baseline"), "unimodal_runs": runs_per_modality("Unimodal")}.
    - `params`, `expect`: per method name ("*" = every method).
    - `skip`: {(method, dataset id): reason} for pairs that cannot apply.
    """
    if not datasets:
        raise DeclarationError("grid: no datasets declared")
    tokens: dict[str, str] = {}
    for d in datasets:
        if d.token.lower() in tokens:
            raise DeclarationError(f"grid: datasets {tokens[d.token.lower()]} and {d.name} share the "
                                   f"token {d.token!r} (tokens are matched case-insensitively by -k)")
        tokens[d.token.lower()] = d.name
    return Grid(tuple(datasets), methods if isinstance(methods, str) else tuple(methods),
                dict(exclude_datasets or {}), undeclared, dict(per_modality or {}),
                {k: dict(v) for k, v in (inputs or {}).items()},
                {k: dict(v) for k, v in (params or {}).items()},
                {k: tuple(v) for k, v in (expect or {}).items()}, dict(skip or {}), _origin())
