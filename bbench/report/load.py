"""Finding and reading the run records a report is made of, and grouping them by seed.

A report is made from `record.json` files only (never by re-running): every record under the
given directories (recursively), plus, for a study directory (one holding `jobs.json`), the
role of each job (`final` results feed the tables, `sweep` jobs Figure 3, `input` runs only
the probe figure, `tune` trials only the selected-hyper-parameter list) and the tuning
`selection.json`. A record that is missing (a study job without one), truncated, not JSON or
of another schema is skipped with one line naming the file and why; the report covers the
good ones and lists the skipped, because one damaged file among hundreds should not cost a
whole report.

Replicates: records whose specs differ only in `train.seed` are one configuration run with
several seeds (a *seed group*, keyed by `group_key`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bbench.config.identity import spec_hash
from bbench.methods.registry import METHODS
from bbench.results.files import MalformedFileError, read_json
from bbench.results.record import RECORD_NAME, RunResult
from bbench.study.jobs import JOBS_FILE as JOBS_NAME
from bbench.study.tune import SELECTION_FILE as SELECTION_NAME

PROGRESS_FROM = 50
"""Show a progress bar when reading at least this many records (fewer read in a blink)."""
ROLES = ("final", "tune", "sweep", "input")
"""Job roles of a study's jobs.json: `input` runs are another job's input that is not itself a
final job of the study (the run a probing procedure reads)."""


@dataclass(frozen=True)
class Skipped:
    """A record the report could not use, and why (one line, naming the file)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Loaded:
    """Every usable record with its role, the skipped ones, and the studies' tuning selections."""

    records: list[RunResult] = field(default_factory=list)
    roles: dict[Path, str] = field(default_factory=dict)  # run dir (resolved) -> role
    jobs: dict[Path, dict[str, Any]] = field(default_factory=dict)  # run dir -> its jobs.json entry
    skipped: list[Skipped] = field(default_factory=list)
    selections: list[dict[str, Any]] = field(default_factory=list)

    def role(self, record: RunResult) -> str:
        """A record outside any study (a plain run or bench directory) is a final result."""
        return self.roles.get(Path(record.run_dir).resolve(), "final")

    def with_role(self, *roles: str) -> list[RunResult]:
        return [r for r in self.records if self.role(r) in roles]


@dataclass
class SeedGroup:
    """The records of one configuration, one per seed, sorted by seed."""

    key: str
    records: list[RunResult]

    @property
    def first(self) -> RunResult:
        return self.records[0]

    @property
    def method(self) -> str:
        return self.first.method

    @property
    def dataset(self) -> str:
        return self.first.dataset

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(seed_of(r) for r in self.records)

    def values(self, metric: str) -> dict[int, float]:
        """seed -> the metric, for the records that have it as a number (`shapley.fac`: nested)."""
        out: dict[int, float] = {}
        for r in self.records:
            value = metric_value(r, metric)
            if value is not None:
                out[seed_of(r)] = value
        return out


def metric_value(record: RunResult, metric: str) -> float | None:
    """A metric as a float; a dotted name reads into a dict metric (`shapley.fac`)."""
    value: Any = record.metrics
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def seed_of(record: RunResult) -> int:
    return int(record.spec["train"]["seed"])


def group_key(record: RunResult) -> str:
    """The spec hash without `train.seed`: equal for the replicates of one configuration."""
    spec = copy.deepcopy(record.spec)
    spec.get("train", {}).pop("seed", None)
    return spec_hash(spec)


def group_records(records: Iterable[RunResult]) -> tuple[list[SeedGroup], list[Skipped]]:
    """Seed groups in first-seen order; a second record of a group's seed is skipped as a duplicate."""
    groups: dict[str, SeedGroup] = {}
    duplicates: list[Skipped] = []
    for r in records:
        key = group_key(r)
        group = groups.setdefault(key, SeedGroup(key, []))
        twin = next((o for o in group.records if seed_of(o) == seed_of(r)), None)
        if twin is not None:
            duplicates.append(Skipped(r.record_path, f"same configuration and seed as "
                                                     f"{twin.record_path}; the first one is used"))
            continue
        group.records.append(r)
    for group in groups.values():
        group.records.sort(key=seed_of)
    return list(groups.values()), duplicates


def find_records(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Record files under `paths` (a record file, a run directory, or any folder above runs)
    and the study directories among them (those with a jobs.json, at any depth)."""
    found: list[Path] = []
    studies: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"nothing to report at {path}: no such file or directory")
        if path.is_file():
            found.append(path)
            continue
        found += sorted(path.rglob(RECORD_NAME))
        studies += sorted(p.parent for p in path.rglob(JOBS_NAME))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, list(dict.fromkeys(s.resolve() for s in studies))


def load(paths: Sequence[str | Path], progress: bool = True) -> Loaded:
    """Read every record under `paths`; problems become `Skipped` entries, never exceptions."""
    files, studies = find_records(paths)
    loaded = Loaded()
    present = set(files)
    for study in studies:
        _read_study(study, loaded, present)
    bar = None
    if progress and len(files) >= PROGRESS_FROM:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="reading records", unit="record", leave=False,
                   dynamic_ncols=True)
    for path in files:
        try:
            loaded.records.append(RunResult.load(path))
        except (FileNotFoundError, MalformedFileError, UnicodeDecodeError, OSError) as err:
            loaded.skipped.append(Skipped(path, _reason(err, path)))
        except (KeyError, TypeError, AttributeError) as err:
            loaded.skipped.append(Skipped(path, f"record lacks a field bbench writes ({err!r})"))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    loaded.records, duplicates = _checked(loaded.records)
    loaded.skipped += duplicates
    return loaded


def _reason(err: BaseException, path: Path) -> str:
    """The error's message without the path it already starts with (Skipped prints it once)."""
    text = str(err)
    return text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text


def _checked(records: list[RunResult]) -> tuple[list[RunResult], list[Skipped]]:
    """Records a report can use: a spec with a registered method, a dataset and a seed, metrics a
    dict (the tables read the method's declared facts: family, per-modality rows)."""
    good, bad = [], []
    for r in records:
        try:
            ok = isinstance(r.metrics, dict) and isinstance(r.method, str) and isinstance(r.dataset, str)
            seed_of(r)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(Skipped(r.record_path, "record lacks the spec fields method, dataset.name or "
                                              "train.seed, or its metrics are not a table"))
        elif r.method not in METHODS:
            bad.append(Skipped(r.record_path, f"method {r.method!r} is not registered in this bbench "
                                              f"(a record of another version, or of a plugin not "
                                              f"installed here)"))
        else:
            good.append(r)
    return good, bad


def _read_study(study: Path, loaded: Loaded, files: set[Path]) -> None:
    """Roles from jobs.json; a job without a record is reported as skipped (not finished)."""
    jobs_path = study / JOBS_NAME
    try:
        jobs = read_json(jobs_path, "study job list")
        if not isinstance(jobs, list):
            raise MalformedFileError("the job list is not a JSON list")
        for job in jobs:
            run_dir = (study / job["dir"]).resolve()
            role = job.get("role", "final")
            if role not in ROLES:
                raise MalformedFileError(f"job {job.get('id')} has role {role!r}, not one of {ROLES}")
            loaded.roles[run_dir] = role
            loaded.jobs[run_dir] = job
            if run_dir / RECORD_NAME not in files:
                loaded.skipped.append(Skipped(run_dir / RECORD_NAME, "missing: the study job has not "
                                                                     "finished (re-run the study to "
                                                                     "complete it)"))
    except (FileNotFoundError, MalformedFileError) as err:
        loaded.skipped.append(Skipped(jobs_path, _reason(err, jobs_path) + "; its records count as "
                                                                           "final results"))
    except (KeyError, TypeError) as err:
        loaded.skipped.append(Skipped(jobs_path, f"a job entry lacks {err}; its records count as final "
                                                 f"results"))
    selection_path = study / SELECTION_NAME
    if selection_path.exists():
        try:
            selection = read_json(selection_path, "tuning selection")
            loaded.selections.append({"study": str(study), "selection": selection})
        except (FileNotFoundError, MalformedFileError) as err:
            loaded.skipped.append(Skipped(selection_path, _reason(err, selection_path)))
