"""The method registry and validated construction of a method from plain settings."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from bbench.config.fields import SpecError, build, fields_of
from bbench.methods.base import Method, RunContext
from bbench.methods.facts import Family
from bbench.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")

WINDOW_ALIASES = {"modulation_starts": "start", "modulation_ends": "end"}


def register_method(*aliases: str):
    """Class decorator: register a Method subclass under its `name` (and BalanceMM aliases)."""

    def decorate(cls: type[Method]) -> type[Method]:
        METHODS.add(cls.name, cls, aliases=aliases)
        return cls

    return decorate


def method_params(cls: type[Method], settings: Mapping[str, Any]) -> Any:
    """Validate `settings` into `cls.Params`, mapping BalanceMM key names to bbench's."""
    aliases = {**(WINDOW_ALIASES if cls.windowed else {}), **cls.param_aliases}
    data: dict[str, Any] = {}
    for key, value in settings.items():
        target = aliases.get(key, key)
        if target in data:
            raise SpecError(f"{cls.name}: {key!r} and {target!r} set the same parameter")
        data[target] = value
    if not cls.windowed:
        for key in ("start", "end"):
            if key in data and key not in fields_of(cls.Params):
                raise SpecError(f"{cls.name}: {key!r} is not accepted; {cls.name} is not a windowed "
                                f"method (methods.md §1.5), it applies at every epoch")
    return build(cls.Params, data, cls.name)


def build_method(name: str, settings: Mapping[str, Any], ctx: RunContext) -> Method:
    cls = METHODS.get(name)
    return cls(method_params(cls, settings), ctx)


def reference_method() -> str:
    """The name of the method every balancing method is compared with (the default method)."""
    found = [name for name in METHODS if METHODS.get(name).comparison_reference]
    if len(found) != 1:
        raise RuntimeError(f"exactly one registered method must declare comparison_reference; "
                           f"found {found or 'none'}")
    return found[0]


def methods_in_table_order(names: Iterable[str] | None = None) -> list[str]:
    """Registered methods (or `names`) by family (methods/facts.py order); within a family
    per-modality methods first (their rows are read as the others' references), then in
    registration order."""
    chosen = [METHODS.canonical(n) for n in names] if names is not None else list(METHODS)
    order, registered = list(Family), list(METHODS)
    return sorted(chosen, key=lambda n: (order.index(METHODS.get(n).family),
                                         METHODS.get(n).per_modality is None, registered.index(n)))
