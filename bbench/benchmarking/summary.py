"""The results of the GPU validation script: stages, targets, and the two summary files.

A stage ends passed, failed (a crash, a failed test, a wrong result) or skipped (with the
reason, e.g. no CUDA device in a dry run); its figures carry their units in their names
(`median_ms`, `GB_per_s`, `samples_per_second`). A target is a bound on one figure; in a dry
run it is shown but not assessed (CPU figures say nothing about the GPU). `summary.json` (for
tools) and `summary.md` (for people) are rewritten after every stage, atomically, so a run that
crashes or is killed later still leaves the figures of the stages that finished.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bbench.results.files import atomic_write, write_json

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
JSON_NAME, MARKDOWN_NAME = "summary.json", "summary.md"
FORMAT = 1  # version of the JSON layout


@dataclass(frozen=True)
class Target:
    """measured >= bound, in `unit`; `assessed` False (dry run) shows it without a verdict."""

    name: str
    measured: float | None
    bound: float
    unit: str
    assessed: bool = True

    @property
    def met(self) -> bool | None:
        if not self.assessed or self.measured is None:
            return None
        return self.measured >= self.bound

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass(frozen=True)
class StageResult:
    """What one stage found; `details` is its Markdown section (tables), `figures` its data."""

    name: str
    status: str
    reason: str | None = None
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()
    details: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "reason": self.reason,
                "seconds": self.seconds, "figures": self.figures,
                "targets": [t.as_dict() for t in self.targets]}


def exit_status(stages: Sequence[StageResult]) -> int:
    """1 when a stage failed, else 0 (a missed target is reported, not an error)."""
    return int(any(s.status == FAILED for s in stages))


def _verdict(target: Target) -> str:
    return {True: "met", False: "**not met**", None: "not assessed"}[target.met]


def markdown(header: dict[str, Any], stages: Sequence[StageResult]) -> str:
    """The Markdown summary: machine, stage table, targets, then each stage's details."""
    machine = header["machine"]
    lines = [f"# GPU validation{' (dry run)' if header['dry_run'] else ''}", "",
             f"- command: `{header['command']}`",
             f"- started: {header['started']} UTC, {header['seconds']:.0f} s in all",
             f"- device: {machine.get('device_name') or machine.get('device')}"
             f" (driver {machine.get('driver') or '-'}, torch built for CUDA "
             f"{machine.get('cuda') or '-'})",
             f"- torch {machine.get('torch')}, bbench {machine.get('bbench')}, "
             f"commit {machine.get('git_commit') or '-'}, CPU {machine.get('cpu_brand') or '-'}",
             *([f"- not read: {machine['error']}"] if machine.get("error") else []),
             "", "| stage | status | seconds | reason |", "|---|---|---:|---|"]
    for s in stages:
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.reason or ''} |")
    targets = [t for s in stages for t in s.targets]
    if targets:
        lines += ["", "## Targets", "", "| target | measured | bound | |", "|---|---:|---:|---|"]
        for t in targets:
            measured = "-" if t.measured is None else f"{t.measured:.3g} {t.unit}"
            lines.append(f"| {t.name} | {measured} | >= {t.bound:g} {t.unit} | {_verdict(t)} |")
    for s in stages:
        if s.details:
            lines += ["", f"## {s.name}", "", s.details]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, header: dict[str, Any], stages: Sequence[StageResult]
                  ) -> tuple[Path, Path]:
    """Write summary.json and summary.md into `out_dir`; return their paths."""
    data = {"format": FORMAT, **header, "exit_status": exit_status(stages),
            "stages": [s.as_dict() for s in stages]}
    json_path, md_path = out_dir / JSON_NAME, out_dir / MARKDOWN_NAME
    write_json(json_path, data, "GPU validation summary")
    text = markdown(header, stages)
    atomic_write(md_path, lambda tmp: tmp.write_text(text), "GPU validation summary")
    return json_path, md_path

