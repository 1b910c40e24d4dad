"""Profiles: how a declared case becomes a concrete `bbench.run` call.

- `smoke` (default): CPU, seconds per case. Embedded data at the dataset's declared small
  budget; each paper dataset on its generated miniature in the real on-disk format when
  `bbench.testing.fixtures` provides one (per dataset, picked up automatically), otherwise
  on a synthetic stand-in with the same modality names and class count. Windowed methods
  start at epoch 0 so that a few-epoch run exercises them.
- `quick`: the embedded (mfeat) cases with enough epochs for methods to separate.
- `paper`: the paper's presets on the real data under the data root (`<root>/<dataset id>`),
  on a GPU; skipped, naming the missing path, when the data or the GPU is absent.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from bbench.cases.dsl import Case, DatasetDecl
from bbench.config.resolve import deep_merge

# Where the miniature generators live: `MINIATURES` ({dataset id: generator}) and
# `make_miniature(dataset, root, seed=0) -> bbench.run overrides`; the first module offering
# both is used (the fixtures module, or the package that re-exports them).
FIXTURES_MODULES = ("bbench.testing.fixtures", "bbench.testing")


class CaseSkipped(Exception):
    """The case does not run in this profile/environment; the message says why."""


@dataclass
class PlanContext:
    """What planning may know about the session: profile, data root, device, a work directory."""

    profile: str = "smoke"
    data_root: Path | None = None
    device: str | None = None
    workdir: Path = Path(".bbench/work")
    miniatures: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class DataPlan:
    dataset: str  # the dataset the run actually loads (e.g. "synthetic" for a stand-in)
    overrides: dict[str, Any]
    kind: str  # embedded | miniature | stand-in | real
    note: str = ""


@dataclass(frozen=True)
class RunPlan:
    """One concrete run: `bbench.run(method, dataset, **overrides, **params)`."""

    case_id: str
    profile: str
    method: str
    dataset: str
    params: dict[str, Any]
    overrides: dict[str, Any]
    data: str = "embedded"
    note: str = ""
    threads: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return deep_merge(self.overrides, self.params)

    def key(self) -> str:
        """Cache key: everything that determines the run's result."""
        return json.dumps([self.method, self.dataset, self.kwargs()], sort_keys=True, default=str)

    def for_method(self, method: str, params: dict[str, Any], case_id: str) -> "RunPlan":
        """The same data, budget and device with another method (references, inputs)."""
        return replace(self, case_id=case_id, method=method, params=dict(params))


def find_miniature(dataset: str) -> Callable[..., dict[str, Any]] | None:
    """`make_miniature` when bbench's test fixtures offer one for `dataset` and its loader is
    registered; None otherwise (then smoke uses the stand-in). Import-guarded: a missing
    module means "no miniatures yet", any other import error is raised."""
    from bbench.data.registry import DATASETS

    for name in FIXTURES_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name in FIXTURES_MODULES:
                continue
            raise
        miniatures = getattr(module, "MINIATURES", None)
        make = getattr(module, "make_miniature", None)
        if miniatures is None or make is None:
            continue
        if dataset in miniatures and dataset in DATASETS:
            return make
        return None
    return None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str = "cpu"
    threads: int | None = 1
    windows_from_zero: bool = False
    paper_data: str = "miniature"  # how paper datasets run: miniature (or stand-in) | real
    # A case's run is never resumed, so the CPU profiles write no per-epoch checkpoint: a
    # ResNet18 miniature's is about 270 MB (weights, momentum, best weights) per epoch, which
    # made one smoke session write over 10 GB. The paper profile's long GPU runs keep theirs.
    checkpoint_every: int = 0
    # The paper presets give the frame datasets loader workers (a GPU machine's cores decode
    # while the GPU trains); the CPU profiles' miniatures are read faster in-process than
    # worker start-up costs, and their cores train. None keeps the preset's.
    num_workers: int | None = 0

    # -- planning -----------------------------------------------------------------------
    def plan(self, case: Case, ctx: PlanContext) -> RunPlan:
        from bbench.methods.registry import METHODS

        if case.skip:
            raise CaseSkipped(case.skip)
        data = self.data(case.dataset, case, ctx)
        cls = METHODS.get(case.method)
        params = deep_merge(self.method_params(cls), case.params_for(self.name))
        device = ctx.device or self.default_device(case.dataset)
        overrides = deep_merge({"progress": False, "device": device,
                                "train.checkpoint_every": self.checkpoint_every}, data.overrides)
        if self.num_workers is not None:
            overrides["train.num_workers"] = self.num_workers
        if case.modalities and data.kind != "stand-in":
            overrides["modalities"] = tuple(case.modalities)
        overrides = deep_merge(overrides, case.overrides_for(self.name))
        return RunPlan(case.id, self.name, case.method, data.dataset, params, overrides, data.kind,
                       data.note, self.threads if device == "cpu" else None)

    def default_device(self, decl: DatasetDecl) -> str:
        if self.paper_data == "real" and decl.kind == "paper":
            return "cuda"
        return self.device

    def method_params(self, cls: type) -> dict[str, Any]:
        from bbench.config.fields import fields_of

        if self.windows_from_zero and getattr(cls, "windowed", False) and "start" in fields_of(cls.Params):
            return {"start": 0}
        return {}

    def data(self, decl: DatasetDecl, case: Case, ctx: PlanContext) -> DataPlan:
        settings = decl.settings.get(self.name)
        if settings is None:
            raise CaseSkipped(decl.reasons.get(self.name) or self.not_declared(decl))
        if decl.kind == "paper":
            if self.paper_data == "real":
                return self.real_data(decl, dict(settings), ctx)
            return self.small_data(decl, case, dict(settings), ctx)
        if decl.explicit_modalities:
            settings = deep_merge({"modalities": decl.explicit_modalities}, settings)
        return DataPlan(decl.name, dict(settings), "embedded")

    def not_declared(self, decl: DatasetDecl) -> str:
        if self.name == "quick":
            return f"the quick profile runs the embedded (mfeat) cases only; {decl.name} declares no quick settings"
        return f"dataset {decl.name} declares no settings for the {self.name} profile"

    def small_data(self, decl: DatasetDecl, case: Case, settings: dict[str, Any],
                   ctx: PlanContext) -> DataPlan:
        """The miniature in the real on-disk format when available, else the synthetic stand-in."""
        make = find_miniature(decl.name)
        if make is not None:
            if decl.name not in ctx.miniatures:
                root = Path(ctx.workdir) / "miniatures" / decl.name
                root.mkdir(parents=True, exist_ok=True)
                ctx.miniatures[decl.name] = dict(make(decl.name, root, seed=0))
            overrides = deep_merge(settings, ctx.miniatures[decl.name])
            root = overrides.get("dataset.root") or overrides.get("root") or ""
            return DataPlan(decl.name, overrides, "miniature", f"at {root}")
        if decl.standin is None:
            raise CaseSkipped(f"{decl.name}: no miniature in {' or '.join(FIXTURES_MODULES)} and no "
                              f"stand-in declared")
        s = decl.standin
        overrides = deep_merge(s.overrides(case.modalities), settings)
        return DataPlan("synthetic", overrides, "stand-in",
                        f"(synthetic, {s.num_classes} classes: {', '.join(case.modalities or s.modalities)})")

    def real_data(self, decl: DatasetDecl, settings: dict[str, Any], ctx: PlanContext) -> DataPlan:
        from bbench.data.registry import DATASETS

        if decl.name not in DATASETS:
            raise CaseSkipped(f"dataset {decl.name} has no registered loader in this bbench")
        if ctx.data_root is None:
            raise CaseSkipped(f"no data root: pass --bbench-data-root DIR or set BBENCH_DATA "
                              f"(the {self.name} profile reads {decl.name} from DIR/{decl.name})")
        candidates = [Path(ctx.data_root) / decl.name]
        if decl.token != decl.name:
            candidates.append(Path(ctx.data_root) / decl.token)
        root = next((p for p in candidates if p.exists()), None)
        if root is None:
            also = f" (also looked for {candidates[1]})" if len(candidates) > 1 else ""
            raise CaseSkipped(f"no data for {decl.name} at {candidates[0]}{also}")
        device = ctx.device or "cuda"
        if device.startswith("cuda") or device.isdigit():
            import torch

            if not torch.cuda.is_available():
                raise CaseSkipped(f"no CUDA device: the {self.name} profile trains {decl.name} on a GPU "
                                  f"(pass --bbench-device cpu to force the CPU)")
        return DataPlan(decl.name, deep_merge(settings, {"dataset.root": str(root)}), "real", f"at {root}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "CPU, seconds per case: mfeat at small budgets, paper datasets on "
                              "miniatures or synthetic stand-ins", windows_from_zero=True),
    "quick": Profile("quick", "mfeat with enough epochs for methods to separate (CPU, about a "
                              "minute for the grid)"),
    "paper": Profile("paper", "the paper's presets on the real data under the data root, on a GPU",
                     threads=None, paper_data="real", checkpoint_every=1, num_workers=None),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown bbench profile {name!r}; choose one of {', '.join(PROFILES)}") from None
