"""The method registry and validated construction of a method from plain settings."""
from __future__ import annotations

from typing import Any, Mapping

from bbench.config.fields import SpecError, build, fields_of
from bbench.methods.base import Method, RunContext
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
