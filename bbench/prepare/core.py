"""The engine of `bbench prepare`: jobs, workers, resumability, atomic writes, the report.

A recipe turns the raw inputs into a list of `Job`s, one per sample (clip, key, video).
A job names the files or folders it produces; when all of them exist the sample is done
and is skipped (resumability), otherwise its function runs — in this process or in a
process pool — and writes each missing output under a temporary name that is renamed into
place only when complete, so an interrupted run never leaves a half-written file behind.
A failing sample is recorded with its reason and the run goes on.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import pickle
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bbench.prepare.media import MediaError, ToolMissing

TMP_DIRNAME = ".prepare_tmp"
FAILED_FILE = "prepare_failed.txt"
MANIFEST_FILE = "prepare_manifest.json"


class PrepareError(ValueError):
    """The preparation cannot start or go on (bad arguments, missing raw inputs, no ffmpeg)."""


# -- jobs ----------------------------------------------------------------------------------
@dataclass
class Job:
    """One sample's work: `fn(ctx, **kwargs)` writes `outputs` (files or folders)."""

    split: str
    sample: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    outputs: tuple[Path, ...]

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


@dataclass
class JobContext:
    """What a job function gets: temporary space, the overwrite flag, ffmpeg."""

    out: Path
    tmp: Path
    overwrite: bool
    ffmpeg: str | None

    def needs(self, output: Path) -> bool:
        """True when `output` must be (re)written."""
        return self.overwrite or not output.exists()

    def staging(self, name: str = "") -> Path:
        """A fresh temporary path on the output's file system (for an atomic rename)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / f"{uuid.uuid4().hex}{name}"

    def commit(self, staged: Path, final: Path) -> None:
        """Move a finished temporary file or folder into place (replacing an old one)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(staged, final)

    def write(self, final: Path, writer: Callable[[Path], None]) -> None:
        """`writer(tmp_path)` writes the file; it then atomically becomes `final`."""
        staged = self.staging(final.suffix)
        try:
            writer(staged)
            self.commit(staged, final)
        finally:
            if staged.exists():
                if staged.is_dir():
                    shutil.rmtree(staged, ignore_errors=True)
                else:
                    staged.unlink()


@dataclass(frozen=True)
class Outcome:
    split: str
    sample: str
    status: str  # "prepared" | "existing" | "failed"
    reason: str = ""


def _run_job(job: Job, out: Path, tmp_root: Path, overwrite: bool, ffmpeg: str | None) -> Outcome:
    ctx = JobContext(out, tmp_root / uuid.uuid4().hex, overwrite, ffmpeg)
    try:
        job.fn(ctx, **job.kwargs)
    except (MediaError, ToolMissing, OSError, ValueError) as err:
        return Outcome(job.split, job.sample, "failed", str(err) or type(err).__name__)
    except Exception as err:  # noqa: BLE001 - one bad input never aborts the run
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Outcome(job.split, job.sample, "failed",
                       f"{type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})")
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return Outcome(job.split, job.sample, "prepared")


def _init_worker() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def run_jobs(jobs: Sequence[Job], out: Path, *, workers: int = 1, overwrite: bool = False,
             ffmpeg: str | None = None, progress: bool = True, label: str = "") -> list[Outcome]:
    """Run the jobs whose outputs are missing (all with `overwrite`); one Outcome per job."""
    tmp_root = out / TMP_DIRNAME
    shutil.rmtree(tmp_root, ignore_errors=True)  # leftovers of an interrupted run
    outcomes: list[Outcome] = []
    todo: list[Job] = []
    for job in jobs:
        if not overwrite and job.done():
            outcomes.append(Outcome(job.split, job.sample, "existing"))
        else:
            todo.append(job)
    bar = _bar(len(todo), label, progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                outcomes.append(_run_job(job, out, tmp_root, overwrite, ffmpeg))
                bar.update(1)
        else:
            with cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
                futures = [pool.submit(_run_job, job, out, tmp_root, overwrite, ffmpeg) for job in todo]
                try:
                    for fut in cf.as_completed(futures):
                        outcomes.append(fut.result())
                        bar.update(1)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
        _remove_if_empty(tmp_root)
    return outcomes


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, label: str, progress: bool) -> Any:
    if not progress or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=label or "prepare", unit="sample", dynamic_ncols=True,
                file=sys.stderr)


# -- atomic writers for the §2 formats --------------------------------------------------------
def save_torch(ctx: JobContext, array: Any, final: Path) -> None:
    import torch

    from bbench.engine.checkpoint import torch_save

    ctx.write(final, lambda p: torch_save(torch.as_tensor(array).contiguous(), p))


def save_npy(ctx: JobContext, array: np.ndarray, final: Path) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, np.ascontiguousarray(array))

    ctx.write(final, write)


def save_pickle(ctx: JobContext, array: np.ndarray, final: Path) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            pickle.dump(np.ascontiguousarray(array), f, protocol=4)

    ctx.write(final, write)


def copy_file(src: Path, dst: Path, overwrite: bool = False) -> bool:
    """Copy (atomically) unless dst exists with the same bytes; True when written."""
    if dst.exists() and not overwrite and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def write_text(dst: Path, text: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dst)


# -- finding inputs -------------------------------------------------------------------------
def index_files(root: Path, extensions: Iterable[str], exclude: Iterable[Path] = ()) -> dict[str, Path]:
    """{file stem: path} of files under `root` with one of `extensions` (first in sorted order).

    Hidden folders and the `exclude` folders (e.g. an output folder inside the raw one) are
    not searched.
    """
    exts = {e.lower() for e in extensions}
    skip = {p.resolve() for p in exclude}
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and (here / d).resolve() not in skip)
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() in exts:
                found.setdefault(path.stem, path)
    return found


def find_file(root: Path, names: Sequence[str], exclude: Iterable[Path] = ()) -> Path | None:
    """The first file under `root` (breadth-first, sorted) whose name is one of `names`."""
    skip = {p.resolve() for p in exclude}
    level = [root]
    while level:
        nxt = []
        for folder in level:
            for name in names:
                if (folder / name).is_file():
                    return folder / name
            try:
                subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            nxt.extend(p for p in subs if p.resolve() not in skip)
        level = nxt
    return None


# -- the report ------------------------------------------------------------------------------
@dataclass
class PrepareReport:
    """What a preparation did: per-split counts, failures, skipped parts and notes."""

    dataset: str
    raw: Path
    out: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (split, sample, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why) parts not prepared
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, split: str, key: str, n: int = 1) -> None:
        per = self.counts.setdefault(split, {"listed": 0, "prepared": 0, "existing": 0, "failed": 0})
        per[key] = per.get(key, 0) + n

    def add_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        for o in outcomes:
            self.count(o.split, "listed")
            self.count(o.split, o.status)
            if o.status == "failed":
                self.failures.append((o.split, o.sample, o.reason))

    def fail(self, split: str, sample: str, reason: str) -> None:
        """A listed sample that never became a job (e.g. no input file matched it)."""
        self.count(split, "listed")
        self.count(split, "failed")
        self.failures.append((split, sample, reason))

    @property
    def total(self) -> dict[str, int]:
        keys = ("listed", "prepared", "existing", "failed")
        return {k: sum(c.get(k, 0) for c in self.counts.values()) for k in keys}

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self, max_failures: int = 10) -> str:
        lines = [f"bbench prepare {self.dataset}: {self.out}"]
        for split, c in self.counts.items():
            lines.append(f"  {split}: {c.get('listed', 0)} samples — {c.get('prepared', 0)} prepared, "
                         f"{c.get('existing', 0)} already done, {c.get('failed', 0)} failed")
        existing = self.total["existing"]
        if existing:
            lines.append(f"  skipped {existing} sample(s) already prepared by an earlier run "
                         "(--overwrite redoes them)")
        if self.failures:
            lines.append(f"  {len(self.failures)} failure(s), all listed in {self.out / FAILED_FILE}:")
            for split, sample, reason in self.failures[:max_failures]:
                lines.append(f"    {split}/{sample}: {reason}")
            if len(self.failures) > max_failures:
                lines.append(f"    … and {len(self.failures) - max_failures} more")
        for what, why in self.skipped:
            lines.append(f"  not prepared: {what} — {why}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        lines.append(f"  took {self.seconds:.1f} s")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "raw": str(self.raw), "out": str(self.out),
                "counts": self.counts, "totals": self.total,
                "failures": [{"split": s, "id": i, "reason": r} for s, i, r in self.failures],
                "skipped": [{"what": w, "why": y} for w, y in self.skipped],
                "notes": self.notes, "parameters": self.parameters, "seconds": round(self.seconds, 3)}


def write_records(report: PrepareReport, versions: dict[str, Any]) -> None:
    """`prepare_failed.txt` (this run's failures; removed when there are none) and the manifest."""
    out = report.out
    failed = out / FAILED_FILE
    if report.failures:
        body = "".join(f"{sample}\t{split}\t{reason}\n" for split, sample, reason in report.failures)
        write_text(failed, "# id\tsplit\treason\n" + body)
    elif failed.exists():
        failed.unlink()
    manifest = {"tool": "bbench prepare", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": versions, **report.as_dict()}
    write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str) + "\n")
