"""Running a study: plan its jobs, launch what is not finished in waves, tune, run the finals.

Order: every job that needs no selection (tuning trials, untuned rows' finals, sweep jobs,
inputs), wave by wave (a job after the inputs it declares); then, when the study tunes, the
selection from the trials' validation scores (`selection.json`) and the selected
configurations' final jobs, again by waves. Re-running the same study skips finished jobs,
resumes checkpointed ones and starts the rest: the job set is a function of the declaration
alone (hashed directories, hashed seeds, hashed trial draws), so an interrupted study and
an uninterrupted one end with the same records. `--dry-run` lists the plan and writes nothing.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from tabulate import tabulate
from tqdm import tqdm

from bbench.config.fields import SpecError, describe_spaces
from bbench.config.identity import flatten
from bbench.results.files import read_json, write_json
from bbench.results.record import RECORD_NAME, RunResult
from bbench.study.declare import StudySpec, study_json
from bbench.study.jobs import INPUTS_DIR, Job, Plan, Row, StudyPlanner, job_state, write_jobs
from bbench.study.launch import LAUNCH_LOG, JobOutcome, JobTask, Launcher, SequentialLauncher
from bbench.study.tune import SELECTION_METRIC, TIE_METRIC, Selection, Trial, write_selection

STUDY_FILE = "study.json"


@dataclass
class StudyOutcome:
    """What a study call planned and did."""

    root: Path
    study: StudySpec
    plan: Plan
    finished_before: int = 0
    launched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job id -> why
    awaiting: list[Row] = field(default_factory=list)  # dry run: tuned rows not yet selectable


class StudyProgress:
    """One display across all jobs: a tqdm bar on a terminal, else a line per job; both
    with counts and an ETA (from the mean time of the jobs this call has run)."""

    def __init__(self, total: int, enabled: bool, stream: IO[str]) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self.done = self.failed = 0
        self.started = time.perf_counter()
        self._bar = (tqdm(total=total, unit="job", desc="study", file=stream, dynamic_ncols=True)
                     if enabled and stream.isatty() else None)

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def finished(self, job: Job, outcome: JobOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        what = f"{job.role} {job.label} on {job.dataset}, replicate {job.replicate}" + (
            f", trial {job.trial}" if job.trial is not None else "") + (
            f", {job.sweep['param']}={job.sweep['value']}" if job.sweep else "")
        if self._bar is not None:
            if outcome.status == "failed":
                self._bar.write(f"failed: {what}: {outcome.error}")
            self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(1)
        elif self.enabled:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            status = (f"failed: {outcome.error}" if outcome.status == "failed"
                      else f"done in {outcome.seconds:.1f}s")
            print(f"[{self.done}/{self.total}] {what}: {status} (ETA {_clock(eta)})",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def check_declaration(root: Path, study: StudySpec) -> None:
    """A study directory holds one study: a re-run must declare it the same way."""
    path = root / STUDY_FILE
    if path.is_file():
        saved, now = flatten(read_json(path, "study declaration")), flatten(study_json(study))
        differences = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                       if saved.get(k) != now.get(k)]
        if differences:
            raise SpecError(f"{root} holds another study (its {STUDY_FILE}); a re-run continues "
                            f"that study and must declare it the same way:\n  "
                            + "\n  ".join(differences) + "\nchoose another --out for a new study")
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SpecError(f"--out {root} exists and is not a study directory (no {STUDY_FILE}); "
                        f"choose a new path")


def run_study(study: StudySpec, out: str | Path, launcher: Launcher | None = None,
              progress: bool = True, dry_run: bool = False, stream: IO[str] = sys.stderr
              ) -> StudyOutcome:
    """Plan the study under `out` and run what is not finished (nothing when `dry_run`)."""
    root = Path(out).resolve()
    check_declaration(root, study)
    planner = StudyPlanner(study, root)
    plan = planner.plan()
    outcome = StudyOutcome(root, study, plan)
    if dry_run:
        for row in plan.tuned:
            selection = _selection(root, row, plan, require_all=True)
            if selection is None or selection.selected is None:
                outcome.awaiting.append(row)
            else:
                _add_finals(planner, plan, row, selection.selected)
        return outcome
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / STUDY_FILE, study_json(study), "study declaration")
    write_jobs(root, plan.jobs)
    launcher = launcher or SequentialLauncher()
    outcome.finished_before = sum(job_state(root, j) == "finished" for j in plan.jobs)
    expected_finals = len(plan.tuned) * study.seeds
    display = StudyProgress(len(plan.jobs) - outcome.finished_before + expected_finals, progress,
                            stream)
    try:
        _launch(root, plan, plan.jobs, launcher, display, outcome)
        if plan.tuned:
            selections = [_selection(root, row, plan, require_all=False) for row in plan.tuned]
            write_selection(root, selections, _untuned(plan))
            before = len(plan.jobs)
            for row, selection in zip(plan.tuned, selections):
                if selection.selected is None:
                    outcome.failed[f"{row.label}@{row.dataset}"] = "every tuning trial failed"
                else:
                    _add_finals(planner, plan, row, selection.selected)
            finals = plan.jobs[before:]
            write_jobs(root, plan.jobs)
            finished = sum(job_state(root, j) == "finished" for j in finals)
            outcome.finished_before += finished
            display.set_total(display.done + len(finals) - finished)
            _launch(root, plan, finals, launcher, display, outcome)
    finally:
        display.close()
        launcher.close()
    return outcome


def _launch(root: Path, plan: Plan, jobs: Sequence[Job], launcher: Launcher,
            display: StudyProgress, outcome: StudyOutcome) -> None:
    """Run the unfinished `jobs`, shallowest inputs first; a job whose input failed fails
    without running (the runner would otherwise train the input itself, again)."""
    for depth in sorted({job.depth for job in jobs}):
        wave = [j for j in jobs if j.depth == depth and job_state(root, j) != "finished"]
        ready, tasks = [], []
        for job in wave:
            missing = [i for i in plan.needs.get(job.id, []) if i in outcome.failed]
            if missing:
                outcome.failed[job.id] = f"an input run it needs failed ({', '.join(missing)})"
                display.finished(job, JobOutcome(job.id, "failed", 0.0, outcome.failed[job.id]))
                continue
            ready.append(job)
            tasks.append(JobTask(job.id, job.label, str(root / job.dir), job.spec, job.evaluate_test,
                                 str(root / INPUTS_DIR), str(root / LAUNCH_LOG)))
        by_id = {job.id: job for job in ready}

        def done(result: JobOutcome) -> None:
            outcome.launched.append(result.id)
            if result.status == "failed":
                outcome.failed[result.id] = result.error or "failed"
            display.finished(by_id[result.id], result)

        launcher.run(tasks, done)


def _selection(root: Path, row: Row, plan: Plan, require_all: bool) -> Selection | None:
    """The row's trials scored from their records; None when `require_all` and one is missing."""
    trials = []
    for job in (j for j in plan.jobs if j.role == "tune" and j.label == row.label
                and j.dataset == row.dataset):
        path = root / job.dir / RECORD_NAME
        if not path.is_file():
            if require_all:
                return None
            trials.append(Trial(job.trial, job.id, _tuned(job, row), None, "failed"))
            continue
        metrics = RunResult.load(path).metrics
        trials.append(Trial(job.trial, job.id, _tuned(job, row), metrics.get(SELECTION_METRIC),
                            "finished", metrics.get(TIE_METRIC)))
    return Selection(row.planned.method, row.label, row.dataset, row.spaces, tuple(trials))


def _tuned(job: Job, row: Row) -> dict:
    """The tuned part of a trial's parameters (without the row's own, such as a modality)."""
    return {k: v for k, v in job.params.items() if k not in row.planned.params}


def _add_finals(planner: StudyPlanner, plan: Plan, row: Row, selected: Trial) -> None:
    finals = planner.final_jobs(row, selected.trial, selected.params)
    plan.add(finals)
    planner.add_inputs(plan, finals)


def _untuned(plan: Plan) -> list[tuple[str, str, str]]:
    """Rows of a tuning study that have no search space: (method, label, dataset)."""
    return sorted({(j.method, j.label, j.dataset) for j in plan.jobs
                   if j.role == "final" and j.trial is None})


def describe_plan(outcome: StudyOutcome) -> str:
    """The dry run's listing: every job with its state, what awaits a selection, what is out."""
    root, plan = outcome.root, outcome.plan
    rows = [[j.dataset, j.role, j.label, "" if j.trial is None else j.trial, j.replicate, j.seed,
             ", ".join(f"{k}={v}" for k, v in j.params.items()), job_state(root, j), j.id[:12]]
            for j in plan.jobs]
    states = [r[7] for r in rows]
    lines = [f"study {root}: {len(rows)} jobs ({states.count('finished')} finished, "
             f"{states.count('resume')} to resume, {states.count('new')} to start)",
             tabulate(rows, headers=["dataset", "role", "run", "trial", "replicate", "seed",
                                     "params", "state", "job"], tablefmt="github")]
    for row in outcome.awaiting:
        space = ", ".join(f"{k}: {v}" for k, v in describe_spaces(row.spaces).items())
        lines.append(f"after tuning: {outcome.study.seeds} final jobs of {row.label} on "
                     f"{row.dataset} with the selected configuration (space {space})")
    for dataset, skipped in plan.skipped.items():
        lines += [f"not run on {dataset}: {m}: {why}" for m, why in skipped.items()]
    return "\n".join(lines)
