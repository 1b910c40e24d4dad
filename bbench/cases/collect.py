"""From a declaration file to concrete cases: import, expand grids, apply refinements, check ids.

Expansion reads the method and dataset registries, so collecting cases imports torch (the
plugin only does this when a case file is collected).
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bbench.cases.dsl import (
    ALL, PROFILES, Above, Case, CaseDecl, DatasetDecl, DeclarationError, Grid, Layer, Ref, Refine,
    RunOf, RunsPerModality)

@dataclass
class Declarations:
    """The concrete cases of one declaration file, in run order, plus what was left out."""

    path: Path
    cases: list[Case]
    excluded: dict[str, str] = field(default_factory=dict)  # dataset -> reason


def load_module(path: Path) -> Any:
    """Import a declaration file under a private module name (no sys.path changes)."""
    path = Path(path).resolve()
    name = "bbench_cases_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + re.sub(
        r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise DeclarationError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_declarations(path: Path) -> Declarations:
    module = load_module(path)
    items = getattr(module, "CASES", None)
    if items is None:
        raise DeclarationError(f"{path}: a case declaration file must define CASES = [grid(...), ...]")
    return expand(items, Path(path))


def expand(items: Iterable[Any], path: Path) -> Declarations:
    cases: list[Case] = []
    refines: list[Refine] = []
    result = Declarations(Path(path), cases)
    for item in items:
        if isinstance(item, Grid):
            grid_cases, excluded = expand_grid(item)
            cases += grid_cases
            result.excluded.update(excluded)
        elif isinstance(item, CaseDecl):
            cases.append(expand_case(item))
        elif isinstance(item, Refine):
            refines.append(item)
        else:
            raise DeclarationError(f"{path}: CASES holds {item!r}; expected grid(...), case(...) or "
                                   f"refine(...)")
    for r in refines:
        hits = 0
        for i, c in enumerate(cases):
            if r.matches(c.id):
                cases[i] = r.apply(c)
                hits += 1
        if not hits and not r.optional:
            raise DeclarationError(f"refine({r.pattern!r}) at {r.origin} matches no case; check the "
                                   f"pattern against `pytest --collect-only -q`, or pass optional=True")
    seen: dict[str, Case] = {}
    for c in cases:
        if c.id in seen:
            raise DeclarationError(f"duplicate case id {c.id!r}: declared at {seen[c.id].origin} and "
                                   f"at {c.origin}")
        seen[c.id] = c
    return result


def order_methods(names: Iterable[str], per_modality: Iterable[str] = ()) -> list[str]:
    """Per-modality rows first, then the families in their one order (methods/facts.py)."""
    from bbench.methods.registry import methods_in_table_order

    first = set(per_modality)
    ordered = methods_in_table_order(names)
    return [n for n in ordered if n in first] + [n for n in ordered if n not in first]


def declared_inputs(cls: type) -> dict[str, Ref]:
    """A method's `inputs` that name their runs by a parameter, as the grid's run references;
    inputs without one are found or trained by the runner itself."""
    return {need.param: (RunsPerModality(need.method, need.modality_param) if need.per_modality
                         else RunOf(need.method, dict(need.params)))
            for need in cls.inputs if need.param}


def inapplicable(cls: type, modalities: tuple[str, ...]) -> str | None:
    """Why `cls` cannot run on data with these modalities (its declared bounds), or None."""
    m, fit = len(modalities), cls.modality_fit(len(modalities))
    if fit == "too many":
        return (f"{cls.name} handles at most {cls.max_modalities} modalities; this dataset has "
                f"{m} ({', '.join(modalities)})")
    if fit == "too few":
        return f"{cls.name} needs at least {cls.min_modalities} modalities; this dataset has {m}"
    return None


def token(text: str) -> str:
    """A string as an id token: characters outside [A-Za-z0-9_] become '_'."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def expand_grid(g: Grid) -> tuple[list[Case], dict[str, str]]:
    from bbench.data.registry import DATASETS
    from bbench.methods.registry import METHODS

    if g.methods == ALL:
        methods = list(METHODS)
    else:
        methods = [METHODS.canonical(m) for m in g.methods]
    # Facts declared on the method classes, then what the grid declares on top of them.
    per_modality = {m: METHODS.get(m).per_modality for m in methods if METHODS.get(m).per_modality}
    per_modality.update({METHODS.canonical(k): v for k, v in g.per_modality.items() if k in METHODS})
    methods = order_methods(methods, per_modality)

    def by_method(mapping: dict) -> dict:
        return {("*" if k == "*" else METHODS.canonical(k)): v for k, v in mapping.items()
                if k == "*" or k in METHODS}

    params, expect, inputs = by_method(g.params), by_method(g.expect), by_method(g.inputs)
    skips = {(m.lower(), d.lower()): reason for (m, d), reason in g.skip.items()}

    datasets = list(g.datasets)
    for d in datasets:
        if d.name in DATASETS and DATASETS.canonical(d.name) != d.name:
            raise DeclarationError(f"dataset {d.name!r} at {d.origin}: use the canonical id "
                                   f"{DATASETS.canonical(d.name)!r}")
    declared = {d.name for d in datasets}
    excluded = {DATASETS.canonical(n) if n in DATASETS else n: r for n, r in g.exclude_datasets.items()}
    undeclared = [n for n in DATASETS if n not in declared and n not in excluded]
    if g.undeclared == "skip":
        used = {d.token.lower() for d in datasets}
        for name in undeclared:
            tok = token(name)
            while tok.lower() in used:
                tok += "_"
            used.add(tok.lower())
            reason = (f"dataset {name!r} is registered but not declared in {Path(g.origin.path).name}: "
                      f"declare it (dataset(...) or paper_dataset(...)) or list it in "
                      f"exclude_datasets with a reason")
            datasets.append(DatasetDecl(name, tok, "embedded", {}, {p: reason for p in PROFILES},
                                        None, g.origin))

    cases: list[Case] = []
    for d in datasets:
        undeclared_reason = d.reasons.get("smoke") if d.name in undeclared else None
        modalities = d.modalities()
        for method in methods:
            cls = METHODS.get(method)
            reason = (undeclared_reason or skips.get((method.lower(), d.name.lower()))
                      or skips.get((method.lower(), d.token.lower())) or inapplicable(cls, modalities))
            base = dict(params.get("*", {}))
            base.update(params.get(method, {}))
            exps = tuple(expect.get("*", ())) + tuple(expect.get(method, ()))
            if cls.extra_passes:  # methods.md §2: passes beyond one forward and one backward
                exps += (Above("train_flops"),)
            common = dict(dataset=d, inputs={**declared_inputs(cls), **inputs.get(method, {})},
                          expect=exps, skip=reason, family=str(cls.family), origin=g.origin)
            if method in per_modality:
                for m in modalities:
                    layer = Layer({**base, per_modality[method]: m})
                    cases.append(Case(f"{method}_{token(m)}-{d.token}", method, layers=(layer,),
                                      modality=m, **common))
            else:
                cases.append(Case(f"{method}-{d.token}", method, layers=(Layer(base),) if base else (),
                                  **common))
    return cases, excluded


def expand_case(c: CaseDecl) -> Case:
    from bbench.methods.registry import METHODS

    cls = METHODS.get(c.method)
    method = METHODS.canonical(c.method)
    if c.modalities:
        available = c.dataset.modalities()
        unknown = [m for m in c.modalities if m not in available]
        if unknown:
            raise DeclarationError(f"case at {c.origin}: modality {unknown[0]!r} is not one of "
                                   f"{', '.join(available)} ({c.dataset.name})")
    suffix = "".join(f"_{token(m)}" for m in c.modalities) if c.modalities else ""
    case_id = c.id or f"{method}{suffix}-{c.dataset.token}"
    reason = c.skip or inapplicable(cls, c.modalities or c.dataset.modalities())
    layers = (Layer(dict(c.params), dict(c.overrides)),) if (c.params or c.overrides) else ()
    return Case(case_id, method, c.dataset, layers, c.modalities, None,
                {**declared_inputs(cls), **c.inputs}, c.expect, reason, str(cls.family), c.origin)

