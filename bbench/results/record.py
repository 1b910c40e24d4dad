"""The run record: resolved spec, final metrics, history, method logs, environment, timings.

One `record.json` per run directory, written once at the end of the run (a run directory
is never reused). `schema` versions the layout so readers can refuse what they do not know.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bbench._version import __version__
from bbench.results.files import MalformedFileError, read_json, write_json

SCHEMA = "bbench.run/1"
RECORD_NAME = "record.json"
MACHINE_METRICS = frozenset({"wall_seconds", "train_seconds", "fit_seconds", "eval_seconds",
                             "final_checkpoint_seconds", "samples_per_second",
                             "peak_memory_bytes"})
"""Metrics that measure the machine, not the run: they differ between any two runs."""


@dataclass
class RunResult:
    """A finished run; `metrics` holds at least acc, f1, acc_<m>, shapley, imbalance, train_flops."""

    run_dir: Path
    spec: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.spec["method"]

    @property
    def dataset(self) -> str:
        return self.spec["dataset"]["name"]

    @property
    def record_path(self) -> Path:
        return self.run_dir / RECORD_NAME

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(),
                "spec": self.spec, "metrics": self.metrics, "history": self.history,
                "environment": self.environment, **self.extra}

    def save(self) -> Path:
        write_json(self.record_path, self.to_json(), "run record")
        return self.record_path

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        path = Path(path)
        if path.is_dir():
            path = path / RECORD_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no run record at {path} (a finished run writes {RECORD_NAME})")
        data = read_json(path, "run record")
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise MalformedFileError(f"{path}: record schema {found!r} is not {SCHEMA!r}")
        known = {"schema", "created", "spec", "metrics", "history", "environment"}
        return cls(path.parent, data["spec"], data["metrics"], data.get("history", []),
                   data.get("environment", {}), {k: v for k, v in data.items() if k not in known})


def git_commit() -> str | None:
    """The commit of the bbench source tree, if it is a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def environment(device: torch.device, fast_path: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where a run ran: versions, machine, device, kernels, and the speed options that took
    effect (`fast_path`: precision, layout, compilation, cuDNN autotuning, loader settings)."""
    from bbench import ops

    env: dict[str, Any] = {
        "bbench": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": sys.version.split()[0], "platform": platform.platform(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "git_commit": git_commit(), "extension": ops.extension_info(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    if fast_path is not None:
        env["fast_path"] = fast_path
    return env
