"""A study's declaration, and the seeds and trial generators derived from it.

A study is methods × datasets × seeds, optionally × tuning trials (`trials`) or × the grid
of one hyper-parameter (`sweep`), plus the setting overrides every run gets (`settings`,
exactly `bbench run --set` keys; `Method.key` applies to one method only). It comes from a
TOML file (`--config`) and/or CLI flags, flags winning, and is stored as `study.json`: a
re-run must declare the same study, or it would mix two experiments in one directory.

Seeds are derived by hashing, never from job order, so adding a method or a dataset changes
no other job's seed (and no job directory). The seed of replicate r on dataset d is the
same for every method and every tuning trial: methods are compared on common random
numbers (the same initialisation and batch order stream where architectures agree), which
is what the paired tests of a report need, and trials differ only in their configuration.
"""
from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from bbench.config.fields import SpecError, build, fields_of, param, to_dict
from bbench.config.identity import flatten
from bbench.registry import suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALL = "all"


@dataclass(frozen=True)
class Sweep:
    """One hyper-parameter of one method over a grid of values (the paper's Figure 3)."""

    param: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class StudySpec:
    """What a study runs; `methods = ("all",)` is every registered method that fits a dataset."""

    methods: tuple[str, ...] = (ALL,)
    datasets: tuple[str, ...] = ("mfeat",)
    seeds: int = param(3, ge=1, doc="replicates of every configuration")
    trials: int = param(0, ge=0, doc="tuning configurations per method and dataset; 0 = none")
    tune_optimizer: bool = False
    sweep: Optional[Sweep] = None
    study_seed: int = param(0, ge=0)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def all_methods(self) -> bool:
        return self.methods == (ALL,)


def parse_sweep(text: str) -> dict[str, Any]:
    """`alpha=0,0.1,0.3` -> {"param": "alpha", "values": ["0", "0.1", "0.3"]} (typed later,
    by the swept method's own field)."""
    name, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name.strip() or len(items) < 2:
        raise SpecError(f"--sweep expects PARAM=V1,V2,... with at least two values, got {text!r}")
    return {"param": name.strip(), "values": items}


def load_study_file(path: str | Path) -> dict[str, Any]:
    """A study TOML file as declaration values: its `[set]` table becomes `settings`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"study file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"study file {path}: not valid TOML: {err}") from None
    allowed = [k for k in fields_of(StudySpec) if k != "settings"] + ["epochs", "set"]
    for key in data:
        if key not in allowed:
            raise SpecError(f"study file {path}: unknown key {key!r}.{suggest(key, allowed)} "
                            f"Allowed: {', '.join(allowed)}")
    values = {k: v for k, v in data.items() if k not in ("set", "epochs")}
    settings = flatten(data.get("set") or {})
    if "epochs" in data:
        settings["epochs"] = data["epochs"]
    if settings:
        values["settings"] = settings
    if isinstance(values.get("sweep"), str):
        values["sweep"] = parse_sweep(values["sweep"])
    return values


def declare_study(config: str | Path | None = None, *, settings: Mapping[str, Any] | None = None,
                  epochs: str | int | None = None, **flags: Any) -> StudySpec:
    """The study from a TOML file and CLI flags (a flag given, i.e. not None, wins; settings
    merge, the command line's last), with method and dataset names made canonical."""
    from bbench.data.registry import DATASETS
    from bbench.methods.registry import METHODS

    values = load_study_file(config) if config else {}
    merged = dict(values.get("settings") or {})
    merged.update(settings or {})
    if epochs is not None:
        merged["epochs"] = epochs
    values["settings"] = merged
    for key, value in flags.items():
        if value is not None:
            values[key] = parse_sweep(value) if key == "sweep" and isinstance(value, str) else value
    study = build(StudySpec, values, "study")
    methods = study.methods if study.all_methods else tuple(
        dict.fromkeys(METHODS.canonical(m) for m in study.methods))
    datasets = tuple(dict.fromkeys(DATASETS.canonical(d) for d in study.datasets))
    if not datasets:
        raise SpecError("study: name at least one dataset (--datasets mfeat,...)")
    if study.sweep is not None and study.trials:
        raise SpecError("study: --sweep and --trials exclude each other: a sweep runs every grid "
                        "value with the study's seeds, tuning would pick one of them")
    return StudySpec(methods, datasets, study.seeds, study.trials, study.tune_optimizer,
                     study.sweep, study.study_seed, merged)


def study_json(study: StudySpec) -> dict[str, Any]:
    """The study as stored in study.json (and compared on a re-run)."""
    return to_dict(study)


def _derived(*parts: Any) -> int:
    """A 31-bit integer from the parts (fits every seed API: numpy's, torch's, Python's)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def replicate_seed(study_seed: int, dataset: str, replicate: int) -> int:
    """train.seed of replicate `replicate` on `dataset`: shared by all methods and trials
    (see the module docstring for why method and trial do not enter)."""
    return _derived("replicate", study_seed, dataset, replicate)


def trial_generator(study_seed: int, dataset: str, label: str) -> random.Random:
    """The generator a (method row, dataset) draws its trial configurations from, in order:
    trial t is the t-th draw, so a larger `--trials` keeps the earlier trials (and their jobs)."""
    return random.Random(_derived("trials", study_seed, dataset, label))
