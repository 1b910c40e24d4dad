"""Lazy loader of the compiled kernels.

The extension is the Python module ``bbench._C`` built by setup.py from ``csrc/``; importing it
registers ``torch.ops.bbench.*`` (schema in csrc/ops.cpp, CPU and optionally CUDA kernels).
``BBENCH_OPS_LIBRARY=/path/libbbench_ops.so`` loads a library built with CMakeLists.txt instead,
through ``torch.ops.load_library``. ``BBENCH_DISABLE_EXT=1`` pretends the extension is missing
(the ops then run their references; useful to test the fallback).

Nothing is loaded until the first op call or :func:`state` call, and a failure is stored, not
raised: ``backend="auto"`` falls back to the reference, ``backend="ext"`` raises it.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import threading

import torch

OPS = ("grad_scale_", "subset_correct", "pixel_lookup")


@dataclasses.dataclass(frozen=True)
class ExtState:
    loaded: bool
    backends: tuple[str, ...]
    error: str | None
    path: str | None
    exc: BaseException | None = None


_LOCK = threading.Lock()
_STATE: ExtState | None = None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _backends() -> tuple[str, ...]:
    found = []
    for key, name in (("CPU", "cpu"), ("CUDA", "cuda")):
        if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"bbench::{op}", key) for op in OPS):
            found.append(name)
    return tuple(found)


def _load() -> ExtState:
    if _truthy("BBENCH_DISABLE_EXT"):
        return ExtState(False, (), "disabled by BBENCH_DISABLE_EXT", None)
    path: str | None = None
    try:
        lib = os.environ.get("BBENCH_OPS_LIBRARY")
        if lib:
            path = os.path.abspath(lib)
            torch.ops.load_library(path)
        else:
            try:
                module = importlib.import_module("bbench._C")
            except ModuleNotFoundError as exc:
                if exc.name != "bbench._C":
                    raise
                raise ImportError(
                    "bbench._C is not built (pure-Python install?). Build it with "
                    "`pip install --no-build-isolation -e .` (torch installed first), "
                    "without BBENCH_NO_EXT=1") from exc
            path = getattr(module, "__file__", None)
        for op in OPS:
            if not hasattr(torch.ops.bbench, op):
                raise RuntimeError(f"the library at {path} does not define torch.ops.bbench.{op}")
        from bbench.ops import fake

        fake.register()
    except Exception as exc:  # noqa: BLE001 - stored and re-raised by backend="ext"
        return ExtState(False, (), f"{type(exc).__name__}: {exc}", path, exc)
    return ExtState(True, _backends(), None, path)


def state() -> ExtState:
    """Load the extension once (thread-safe) and return what happened."""
    global _STATE
    if _STATE is None:
        with _LOCK:
            if _STATE is None:
                _STATE = _load()
    return _STATE
