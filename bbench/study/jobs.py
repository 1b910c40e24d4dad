"""A study expanded into jobs: one bbench run each, in `jobs/<id>` where id hashes its spec.

Rows come from bench's plan (`plan_bench`: family order, one row per modality for a
per-modality method, methods outside a dataset's modality bounds left out with the reason),
narrowed to the study's methods. Each row becomes:

- `final` jobs: one per replicate, with the row's parameters (or, when tuned, the selected
  ones: planned by `final_jobs` once the selection exists);
- `tune` jobs: one per trial, at replicate 0's seed, validation only; their id hashes the
  spec together with that fact, so a trial never shares a directory with the final run of
  the same configuration (which must read the test split);
- `sweep` jobs: one per grid value and replicate, for the swept method;
- `input` jobs: a run another job declares as input (methods/facts.py `RunInput`) that no
  other job of the study is; most inputs are final jobs already (the per-modality rows
  trained with the same seed), and are then not repeated.

Jobs whose method declares inputs run in a later wave than those inputs (`depth`). The
runner looks inputs up by spec hash under the output root's dataset folder; every job
therefore runs with `output_root = STUDY/.inputs`, where `.inputs/<dataset>/<id>` links to
`jobs/<id>`: inputs are found among the study's own jobs, trained once per study. (The
folder is hidden and holds links only, so walking the study for records meets each once.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from bbench.config.fields import SearchSpace, SpecError, fields_of, search_spaces, to_dict
from bbench.config.identity import spec_hash
from bbench.config.resolve import resolve_spec
from bbench.config.specs import OptimizerSpec
from bbench.data.registry import DATASETS, resolve_modalities
from bbench.engine.checkpoint import CHECKPOINT_NAME
from bbench.methods.registry import METHODS, WINDOW_ALIASES, method_params, reference_method
from bbench.report.bench import PlannedRun, plan_bench, split_overrides
from bbench.results.files import write_json
from bbench.results.record import RECORD_NAME
from bbench.runner import input_spec, input_variants
from bbench.study.declare import StudySpec, replicate_seed
from bbench.study.tune import trial_configurations

Role = Literal["tune", "final", "sweep", "input"]
JOBS_FILE = "jobs.json"
JOBS_DIR = "jobs"
INPUTS_DIR = ".inputs"
OPTIMIZER_PREFIX = "train.optimizer."


@dataclass(frozen=True)
class Job:
    """One run of a study; `spec` is its resolved spec (plain data), `id` names its folder."""

    id: str
    method: str
    label: str
    dataset: str
    role: Role
    trial: int | None
    replicate: int
    seed: int
    params: dict[str, Any]
    sweep: dict[str, Any] | None
    spec: dict[str, Any] = field(repr=False)
    depth: int = 0

    @property
    def dir(self) -> str:
        return f"{JOBS_DIR}/{self.id}"

    @property
    def evaluate_test(self) -> bool:
        """Only tuning trials skip the test split (they select on validation)."""
        return self.role != "tune"

    def entry(self) -> dict[str, Any]:
        """The job as listed in jobs.json."""
        return {"id": self.id, "dir": self.dir, "method": self.method, "label": self.label,
                "dataset": self.dataset, "role": self.role, "trial": self.trial,
                "replicate": self.replicate, "seed": self.seed, "params": self.params,
                "sweep": self.sweep}


@dataclass(frozen=True)
class Row:
    """One table row of a dataset (bench's PlannedRun) and what tuning may vary in it."""

    dataset: str
    planned: PlannedRun
    spaces: dict[str, SearchSpace]

    @property
    def label(self) -> str:
        return self.planned.label


@dataclass
class Plan:
    """The study's jobs known so far, the rows waiting for a selection, what was left out."""

    jobs: list[Job] = field(default_factory=list)
    needs: dict[str, list[str]] = field(default_factory=dict)  # job id -> its input jobs' ids
    tuned: list[Row] = field(default_factory=list)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> method -> why
    modalities: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def add(self, jobs: Iterable[Job]) -> None:
        """Append jobs not already planned (an input that is also a final job runs once)."""
        known = {job.id for job in self.jobs}
        for job in jobs:
            if job.id not in known:
                self.jobs.append(job)
                known.add(job.id)


def method_depth(name: str) -> int:
    """0 for a method without inputs, else one more than its deepest input's method."""
    cls = METHODS.get(name)
    return 1 + max(method_depth(need.method) for need in cls.inputs) if cls.inputs else 0


def tuning_spaces(method: str, tune_optimizer: bool) -> dict[str, SearchSpace]:
    """The spaces a method's trials draw from: its declared ones, and for the reference
    method with `tune_optimizer` the optimizer's (so that it, too, gets the trial budget)."""
    cls = METHODS.get(method)
    spaces = search_spaces(cls.Params, cls.name)
    if tune_optimizer and cls.name == reference_method():
        spaces.update({OPTIMIZER_PREFIX + k: v
                       for k, v in search_spaces(OptimizerSpec, "optimizer").items()})
    return spaces


class StudyPlanner:
    """Expands a study into jobs for the study directory `root` (absolute)."""

    def __init__(self, study: StudySpec, root: Path) -> None:
        self.study = study
        self.root = root
        self.common, self.per_method = split_overrides(study.settings)
        self.sweep_method: str | None = None

    # -- rows ------------------------------------------------------------------------------
    def rows(self, plan: Plan) -> list[Row]:
        """Every (dataset, row) of the study, in dataset then table order."""
        reference = reference_method()
        chosen = None if self.study.all_methods else set(self.study.methods)
        if chosen is not None and self.study.sweep is not None:
            chosen.add(reference)  # the sweep's figure marks the reference run
        rows: list[Row] = []
        for dataset in self.study.datasets:
            base = resolve_spec(reference, dataset, self.common)
            modalities = resolve_modalities(DATASETS.get(dataset), base.dataset.modalities)
            plan.modalities[dataset] = modalities
            planned, skipped = plan_bench(modalities)
            if chosen is not None:
                planned = [p for p in planned if p.method in chosen]
                skipped = {m: why for m, why in skipped.items() if m in chosen}
            if skipped:
                plan.skipped[dataset] = skipped
            rows += [Row(dataset, p, tuning_spaces(p.method, self.study.tune_optimizer)
                         if self.study.trials else {}) for p in planned]
        if not rows:
            raise SpecError("study: no method fits any of its datasets: "
                            + "; ".join(f"{d}: {', '.join(f'{m} {w}' for m, w in s.items())}"
                                        for d, s in plan.skipped.items()))
        if self.study.sweep is not None:
            self.sweep_method = self._sweep_method(rows)
        return rows

    def _sweep_method(self, rows: Sequence[Row]) -> str:
        """The one study method that has the swept parameter."""
        name = self.study.sweep.param
        having = sorted({r.planned.method for r in rows
                         if _field_name(METHODS.get(r.planned.method), name) is not None})
        if len(having) != 1:
            found = f"{', '.join(having)} have it" if having else "none of them has it"
            raise SpecError(f"--sweep {name}: a sweep varies one method's parameter, but of the "
                            f"study's methods {found}; name that one method with --methods")
        return having[0]

    # -- jobs ------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """All jobs that need no selection; tuned rows are kept for `final_jobs`."""
        plan = Plan()
        for row in self.rows(plan):
            if row.planned.method == self.sweep_method:
                plan.add(self._sweep_jobs(row))
            elif row.spaces:
                plan.tuned.append(row)
                plan.add(self.tune_jobs(row))
            else:
                plan.add(self._replicates(row, "final", dict(row.planned.params), None, None))
        self.add_inputs(plan, plan.jobs)
        return plan

    def tune_jobs(self, row: Row) -> list[Job]:
        """`trials` configurations drawn for the row, each trained once at replicate 0's seed."""
        configs = trial_configurations(self.study.study_seed, row.dataset, row.label, row.spaces,
                                       self.study.trials)
        return [self.job(row, "tune", {**row.planned.params, **config}, trial, 0, None)
                for trial, config in enumerate(configs)]

    def final_jobs(self, row: Row, selected_trial: int, selected: Mapping[str, Any]) -> list[Job]:
        """The selected configuration of a tuned row, with the study's seeds."""
        return self._replicates(row, "final", {**row.planned.params, **selected}, selected_trial, None)

    def _sweep_jobs(self, row: Row) -> list[Job]:
        name = self.study.sweep.param
        cls = METHODS.get(row.planned.method)
        jobs: list[Job] = []
        for raw in self.study.sweep.values:
            value = _typed_value(cls, name, raw)
            jobs += self._replicates(row, "sweep", {**row.planned.params, name: value}, None,
                                     {"param": name, "value": value})
        return jobs

    def _replicates(self, row: Row, role: Role, params: dict[str, Any], trial: int | None,
                    sweep: dict[str, Any] | None) -> list[Job]:
        return [self.job(row, role, params, trial, r, sweep) for r in range(self.study.seeds)]

    def job(self, row: Row, role: Role, params: dict[str, Any], trial: int | None,
            replicate: int, sweep: dict[str, Any] | None) -> Job:
        """The job of `row` with `params`, its spec resolved exactly as `bbench run` would."""
        method = row.planned.method
        seed = replicate_seed(self.study.study_seed, row.dataset, replicate)
        spec = resolve_spec(method, row.dataset, {
            **self.common, **self.per_method.get(method, {}), **params, "seed": seed,
            "output_root": str(self.root / INPUTS_DIR), "progress": False})
        tree = to_dict(spec)
        ident = spec_hash({**tree, "validation_only": True}) if role == "tune" else spec_hash(tree)
        return Job(ident, spec.method, row.label, spec.dataset.name, role, trial, replicate, seed,
                   params, sweep, tree, method_depth(spec.method))

    def add_inputs(self, plan: Plan, jobs: Sequence[Job]) -> None:
        """Plan the runs `jobs` declare as inputs, as the runner will look them up (inputs of
        inputs too), and note which jobs each needs."""
        pending = list(jobs)
        while pending:
            job = pending.pop(0)
            cls = METHODS.get(job.method)
            if not cls.inputs:
                continue
            params = method_params(cls, job.spec["method_params"])
            spec = resolve_spec(base=job.spec)
            needed_ids = plan.needs.setdefault(job.id, [])
            for need in cls.inputs:
                if need.param and getattr(params, need.param):
                    continue  # named explicitly: not the study's to train
                for variant in input_variants(need, plan.modalities[job.dataset]):
                    tree = to_dict(input_spec(spec, need.method, variant))
                    needed = Job(spec_hash(tree), tree["method"],
                                 METHODS.get(need.method).label_for(variant), job.dataset, "input",
                                 None, job.replicate, job.seed, variant, None, tree,
                                 method_depth(need.method))
                    needed_ids.append(needed.id)
                    plan.add([needed])
                    pending.append(needed)


def _field_name(cls: Any, name: str) -> str | None:
    """The Params field `name` sets on `cls` (itself or through an alias), or None."""
    target = {**(WINDOW_ALIASES if cls.windowed else {}), **cls.param_aliases}.get(name, name)
    return target if target in fields_of(cls.Params) else None


def _typed_value(cls: Any, name: str, raw: Any) -> Any:
    """A sweep value as the method's field types and checks it (refused before any run)."""
    return getattr(method_params(cls, {name: raw}), _field_name(cls, name))


def job_state(root: Path, job: Job) -> Literal["finished", "resume", "new"]:
    """finished: its record exists; resume: a checkpoint without record; new: anything else."""
    folder = root / job.dir
    if (folder / RECORD_NAME).is_file():
        return "finished"
    return "resume" if (folder / CHECKPOINT_NAME).is_file() else "new"


def write_jobs(root: Path, jobs: Sequence[Job]) -> None:
    """jobs.json, and the `.inputs` links through which the runner finds input runs."""
    write_json(root / JOBS_FILE, [job.entry() for job in jobs], "study jobs")
    for job in jobs:
        if job.role == "tune":
            continue
        link = root / INPUTS_DIR / job.dataset / job.id
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.join("..", "..", JOBS_DIR, job.id), link, target_is_directory=True)

