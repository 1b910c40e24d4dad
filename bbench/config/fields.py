"""Typed, range-checked dataclass fields and their construction from plain data.

Every spec in bbench (run, dataset, model, training, per-method and per-encoder
hyper-parameters) is a frozen dataclass whose fields carry their valid range in the
field metadata. `build` turns plain data (a preset file, CLI strings, keyword arguments)
into such a dataclass, coercing strings to the declared type, rejecting unknown keys with
close-match suggestions and out-of-range values with a message that names the owner, the
field, the value and what is allowed -- before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

from bbench.registry import suggest

T = TypeVar("T")

_RANGE_KEYS = ("ge", "gt", "le", "lt")


class SpecError(ValueError):
    """A value in a spec is of the wrong type, out of range or unknown."""


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a documented valid range (inclusive `ge`/`le`, strict `gt`/`lt`)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
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
