"""Launchers: how a study's jobs get executed, behind one small interface.

A launcher receives self-contained `JobTask`s (a run directory, a resolved spec, whether
the test split may be read) and reports one `JobOutcome` per task through `on_done` as each
ends. It knows nothing about studies: the study decides what to run and in which waves (a
job runs after the inputs it needs), the launcher only where and how many at a time.

- `SequentialLauncher` runs tasks one after another in this process.
- `ProcessPoolLauncher(workers)` runs them in spawned processes (a fresh interpreter each:
  no CUDA or thread state inherited), each with an equal share of the CPU threads.

A cluster launcher (Slurm) implements the same two methods: `run` writes each task as JSON
(it is plain data: `dataclasses.asdict`), submits one array job whose script calls
`run_task` on its task, waits, and reads the outcomes back from the launch log; `close`
cancels what is still queued.

`run_task` executes one task: a record -> nothing to do; a checkpoint -> resume it; otherwise
start afresh (clearing what a run killed before its first checkpoint left behind). Every
start and end is appended to the study's launch log (`launches.jsonl`), one JSON line each.
"""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import torch

import bbench
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.engine.checkpoint import CHECKPOINT_NAME
from bbench.results.lock import RunLock
from bbench.results.record import RECORD_NAME
from bbench.runner import execute

LAUNCH_LOG = "launches.jsonl"


@dataclass(frozen=True)
class JobTask:
    """Everything needed to run one job, as plain data (picklable, JSON-able)."""

    id: str
    label: str
    run_dir: str
    spec: dict[str, Any]
    evaluate_test: bool
    output_root: str
    log: str


@dataclass(frozen=True)
class JobOutcome:
    id: str
    status: Literal["finished", "failed"]
    seconds: float
    error: str | None = None


class Launcher(Protocol):
    """Runs tasks and calls `on_done` once per task as it ends (in any order)."""

    def run(self, tasks: Sequence[JobTask], on_done: Callable[[JobOutcome], None]
            ) -> list[JobOutcome]: ...

    def close(self) -> None: ...


def log_event(path: str | Path, event: dict[str, Any]) -> None:
    """Append one JSON line in a single write (concurrent workers never interleave lines)."""
    line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                       "pid": os.getpid(), **event}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def run_task(task: JobTask) -> JobOutcome:
    """Run (or resume) one job; a failure becomes an outcome, never an exception, so that
    one bad configuration does not stop the others. Ctrl-C still stops everything."""
    run_dir = Path(task.run_dir)
    started = time.perf_counter()
    if (run_dir / RECORD_NAME).is_file():
        return JobOutcome(task.id, "finished", 0.0)
    mode: Literal["fresh", "resume"] = "resume" if (run_dir / CHECKPOINT_NAME).is_file() else "fresh"
    log_event(task.log, {"event": "start", "id": task.id, "label": task.label, "mode": mode})
    try:
        if mode == "resume":
            bbench.run(resume=run_dir, evaluate_test=task.evaluate_test, progress=False,
                       output_root=task.output_root)
        else:
            _clear_unstarted(run_dir)
            execute(resolve_spec(base={**task.spec, "run_dir": str(run_dir)}), None,
                    evaluate_test=task.evaluate_test)
    except KeyboardInterrupt:
        log_event(task.log, {"event": "interrupted", "id": task.id})
        raise
    except Exception as err:  # noqa: BLE001 -- any failure of one job is reported, not raised
        message = f"{type(err).__name__}: {err}"
        log_event(task.log, {"event": "failed", "id": task.id, "error": message,
                             "traceback": traceback.format_exc()})
        return JobOutcome(task.id, "failed", time.perf_counter() - started, message)
    seconds = time.perf_counter() - started
    log_event(task.log, {"event": "finished", "id": task.id, "seconds": round(seconds, 3)})
    return JobOutcome(task.id, "finished", seconds)


def _clear_unstarted(run_dir: Path) -> None:
    """Remove what a run killed before its first checkpoint left (spec.json, a lock file):
    nothing in it can be resumed, and a fresh run needs an empty directory. A directory
    another live process trains in is refused by its lock, never removed."""
    if run_dir.exists():
        with RunLock(run_dir):
            pass
        shutil.rmtree(run_dir)


class SequentialLauncher:
    """One task at a time, in this process (the default; what tests and debugging use)."""

    def run(self, tasks: Sequence[JobTask], on_done: Callable[[JobOutcome], None]
            ) -> list[JobOutcome]:
        outcomes = []
        for task in tasks:
            outcome = run_task(task)
            on_done(outcome)
            outcomes.append(outcome)
        return outcomes

    def close(self) -> None:
        """Nothing is held between calls."""


class ProcessPoolLauncher:
    """Up to `workers` tasks at once, each in a spawned process of a pool kept across calls."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise SpecError(f"--workers {workers}: need at least 1")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start, initargs=(threads,))
        return self._pool

    def run(self, tasks: Sequence[JobTask], on_done: Callable[[JobOutcome], None]
            ) -> list[JobOutcome]:
        pool = self._executor()
        pending: dict[Future, JobTask] = {pool.submit(run_task, task): task for task in tasks}
        outcomes, broken = [], False
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        broken = True
                        outcome = JobOutcome(task.id, "failed", 0.0, "its worker process died "
                                             "(killed, or out of memory) while it or another ran")
                    on_done(outcome)
                    outcomes.append(outcome)
        except BaseException:  # Ctrl-C: stop queued tasks; running ones got the signal too
            self.close(block=False)
            raise
        if broken:  # a broken pool refuses new work: the next call starts a fresh one
            self.close()
        return outcomes

    def close(self, block: bool = True) -> None:
        """Shut the pool down (`block`: after the running tasks end)."""
        if self._pool is not None:
            self._pool.shutdown(wait=block, cancel_futures=True)
            self._pool = None


def _worker_start(threads: int) -> None:
    """Share the CPU between workers, and die with the study process: a study killed with
    SIGKILL must not leave workers training (and holding job directories) behind."""
    torch.set_num_threads(threads)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # elsewhere an orphaned worker finishes its one job, then finds its pool gone
