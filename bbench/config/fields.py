"""Typed, range-checked dataclass fields and their construction from plain data.

Every spec in bbench (run, dataset, model, training, per-method and per-encoder
hyper-parameters) is a frozen dataclass whose fields carry their valid range in the
field metadata. `build` turns plain data (a preset file, CLI strings, keyword arguments)
into such a dataclass, coercing strings to the declared type, rejecting unknown keys with
close-match suggestions and out-of-range values with a message that names the owner, the
field, the value and what is allowed -- before any work starts.

A tunable hyper-parameter also declares its search space next to its range
(`param(0.3, ge=0, search=LogUniform(0.05, 2.0))`), so that equal-budget tuning
(`bbench study --trials N`) draws every method's configurations from spaces its author
chose, and `search_spaces` checks each space against the range it must stay inside.
"""
from __future__ import annotations

import dataclasses
import math
import random
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, TypeVar, Union

from bbench.registry import suggest

T = TypeVar("T")

_RANGE_KEYS = ("ge", "gt", "le", "lt")


class SpecError(ValueError):
    """A value in a spec is of the wrong type, out of range or unknown."""


SIGNIFICANT_DIGITS = 4
"""Digits a sampled real value keeps: a selected configuration printed in a report is then
exactly the one that ran, and can be passed back with --set as printed."""


def _rounded(value: float, lo: float, hi: float) -> float:
    return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), lo), hi)


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform on [lo, hi]: for strengths whose plausible values span orders of magnitude
    (α, γ, λ), where a uniform draw would almost never try the small ones."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi:
            raise SpecError(f"log-uniform search space needs 0 < lo < hi, got ({self.lo}, {self.hi})")

    def sample(self, rng: random.Random) -> float:
        return _rounded(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))), self.lo, self.hi)

    def extremes(self) -> tuple[Any, ...]:
        return self.lo, self.hi

    def __str__(self) -> str:
        return f"log-uniform({self.lo:g}, {self.hi:g})"


@dataclass(frozen=True)
class Uniform:
    """Uniform on [lo, hi]: for bounded settings such as probabilities and thresholds."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise SpecError(f"uniform search space needs lo < hi, got ({self.lo}, {self.hi})")

    def sample(self, rng: random.Random) -> float:
        return _rounded(rng.uniform(self.lo, self.hi), self.lo, self.hi)

    def extremes(self) -> tuple[Any, ...]:
        return self.lo, self.hi

    def __str__(self) -> str:
        return f"uniform({self.lo:g}, {self.hi:g})"


@dataclass(frozen=True)
class IntRange:
    """Every integer in [lo, hi] (both included), equally likely."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (isinstance(self.lo, int) and isinstance(self.hi, int) and self.lo < self.hi):
            raise SpecError(f"integer search space needs integers lo < hi, got ({self.lo}, {self.hi})")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.lo, self.hi)

    def extremes(self) -> tuple[Any, ...]:
        return self.lo, self.hi

    def __str__(self) -> str:
        return f"integers {self.lo}..{self.hi}"


@dataclass(frozen=True)
class Choice:
    """One of a few named options (a variant, a mode), equally likely."""

    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise SpecError(f"choice search space needs at least two options, got {self.options!r}")

    def sample(self, rng: random.Random) -> Any:
        return self.options[rng.randrange(len(self.options))]

    def extremes(self) -> tuple[Any, ...]:
        return tuple(self.options)

    def __str__(self) -> str:
        return "one of " + ", ".join(str(o) for o in self.options)


SearchSpace = Union[LogUniform, Uniform, IntRange, Choice]


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
    search: SearchSpace | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a documented valid range (inclusive `ge`/`le`, strict `gt`/`lt`)
    and, for a tunable hyper-parameter, the space tuning draws it from."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc, "search": search}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_range(field: dataclasses.Field) -> str:
    """Human-readable constraint of a field, e.g. 'alpha >= 0' or '0 <= q_base <= 1'."""
    m = field.metadata
    lower = (f"{m['ge']} <= " if m.get("ge") is not None
             else f"{m['gt']} < " if m.get("gt") is not None else "")
    upper = (f" <= {m['le']}" if m.get("le") is not None
             else f" < {m['lt']}" if m.get("lt") is not None else "")
    if lower and not upper:  # read 'alpha >= 0' rather than '0 <= alpha'
        bound, op = lower.split()
        return f"{field.name} {'>=' if op == '<=' else '>'} {bound}"
    return f"{lower}{field.name}{upper}"


def is_ranged(field: dataclasses.Field) -> bool:
    """Whether the field declares a valid range (ge, gt, le or lt)."""
    return any(field.metadata.get(k) is not None for k in _RANGE_KEYS)


def check_range(owner: str, field: dataclasses.Field, value: Any) -> None:
    """Raise SpecError when a numeric `value` violates the field's declared range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    m = field.metadata
    ranged = is_ranged(field)
    bad = (
        (isinstance(value, float) and math.isnan(value))
        # inf satisfies `alpha >= 0` but no algorithm is defined there, and a record could only
        # store it as non-standard JSON: a ranged number must be finite.
        or (ranged and isinstance(value, float) and math.isinf(value))
        or (m.get("ge") is not None and not value >= m["ge"])
        or (m.get("gt") is not None and not value > m["gt"])
        or (m.get("le") is not None and not value <= m["le"])
        or (m.get("lt") is not None and not value < m["lt"])
    )
    if bad:
        need = describe_range(field) + (" and a finite value" if ranged else "")
        raise SpecError(f"{owner}: {field.name}={value!r} is out of range; need {need}")


def search_spaces(cls: type, owner: str) -> dict[str, SearchSpace]:
    """The declared search space of every tunable field of `cls`, by field name.

    Each space's extremes (bounds, or every option) must satisfy the field's own range and
    type, so that no draw can be refused after the trial has been planned.
    """
    spaces: dict[str, SearchSpace] = {}
    hints = hints_of(cls)
    for name, field in fields_of(cls).items():
        space = field.metadata.get("search")
        if space is None:
            continue
        for value in space.extremes():
            coerce(value, hints[name], owner, name)
            try:
                check_range(owner, field, value)
            except SpecError:
                raise SpecError(f"{owner}: the search space {space} of {name} leaves its valid "
                                f"range {describe_range(field)}") from None
        spaces[name] = space
    return spaces


def sample_configuration(spaces: Mapping[str, SearchSpace], rng: random.Random) -> dict[str, Any]:
    """One draw from every space, in name order (so a configuration depends on the spaces and
    the generator only, not on declaration order)."""
    return {name: spaces[name].sample(rng) for name in sorted(spaces)}


def describe_spaces(spaces: Mapping[str, SearchSpace]) -> dict[str, str]:
    """Spaces as readable text (`alpha: log-uniform(0.05, 2)`), for study files and reports."""
    return {name: str(space) for name, space in sorted(spaces.items())}


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type[T], data: Mapping[str, Any] | T | None, owner: str) -> T:
    """Construct dataclass `cls` from a mapping, validating every field.

    Strings are coerced to the declared type (so CLI overrides need no quoting rules),
    nested dataclasses are built recursively, and unknown keys are rejected.
    """
    if isinstance(data, cls):
        return data
    data = dict(data or {})
    known = fields_of(cls)
    hints = hints_of(cls)
    for key in data:
        if key not in known:
            raise SpecError(f"{owner}: unknown key {key!r}.{suggest(key, list(known))}"
                            f" Allowed: {', '.join(known) or '(none)'}")
    kwargs = {}
    for name, field in known.items():
        if name in data:
            value = coerce(data[name], hints[name], f"{owner}.{name}" if dataclasses.is_dataclass(
                _strip_optional(hints[name])) else owner, name)
            check_range(owner, field, value)
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise SpecError(f"{owner}: {err}") from None


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def coerce(value: Any, tp: Any, owner: str, name: str) -> Any:
    """Convert `value` to type `tp`, raising SpecError with the field named on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, owner, name)
            except SpecError as err:
                errors.append(str(err))
        raise SpecError(errors[0] if errors else f"{owner}: {name}={value!r} has the wrong type")
    if origin is Literal:
        for option in args:
            if value == option or (isinstance(value, str) and str(option).lower() == value.lower()):
                return option
        raise SpecError(f"{owner}: {name}={value!r} is not allowed; choose one of "
                        f"{', '.join(repr(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, (Mapping, tp)):
            raise SpecError(f"{owner}: {name} must be a table of settings, got {value!r}")
        return build(tp, value, owner)
    if origin is tuple:
        items = _split_list(value, owner, name)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], owner, name) for v in items)
        if len(items) != len(args):
            raise SpecError(f"{owner}: {name}={value!r} needs exactly {len(args)} values")
        return tuple(coerce(v, a, owner, name) for v, a in zip(items, args))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{owner}: {name} must be a table of settings, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, vt, owner, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise SpecError(f"{owner}: {name}={value!r} must be true or false")
    if tp in (int, float):
        return _number(value, tp, owner, name)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SpecError(f"{owner}: {name}={value!r} must be a string")
    return value


def _number(value: Any, tp: type, owner: str, name: str) -> int | float:
    """int or float from a number or its string; an integral float is an int, a bool neither."""
    error = SpecError(f"{owner}: {name}={value!r} must be {'an integer' if tp is int else 'a number'}")
    if isinstance(value, bool):
        raise error
    if tp is int and isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise error
    if isinstance(value, (int, float, str)):
        try:
            return tp(value)
        except ValueError:
            pass
    raise error


def _split_list(value: Any, owner: str, name: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise SpecError(f"{owner}: {name}={value!r} must be a list")


def to_dict(obj: Any) -> Any:
    """Plain (JSON-ready) data of a spec: dataclasses to dicts, tuples to lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj
