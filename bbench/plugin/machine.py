"""Where results come from and where saves go: machine id and info, commit info, save names.

Separate from storage.py so that the session state can name save files without importing
the code that writes them (which needs the session state: no import cycle).
"""
from __future__ import annotations

import os
import platform
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

STORAGE = ".bbench"
SAVE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SAVE_FILE = re.compile(r"^(\d{4})_(.+)\.json$")


def machine_id() -> str:
    """pytest-benchmark's machine id, e.g. Linux-CPython-3.11-64bit."""
    return (f"{platform.system()}-{platform.python_implementation()}-"
            f"{'.'.join(platform.python_version_tuple()[:2])}-{struct.calcsize('P') * 8}bit")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "node": platform.node(), "processor": platform.processor(), "machine": platform.machine(),
        "python_compiler": platform.python_compiler(),
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(), "release": platform.release(),
        "system": platform.system(), "cpu": {"count": os.cpu_count(), "brand": _cpu_brand()},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    try:
        from bbench._version import __version__

        info["bbench"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _cpu_brand() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def commit_info(root: Path) -> dict[str, Any]:
    """pytest-benchmark-style commit info of the repository at `root` (empty outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return {"error": "not a git repository"}
    return {"id": sha, "time": git("log", "-1", "--format=%cI"), "author_time": git("log", "-1", "--format=%aI"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "project": Path(git("rev-parse", "--show-toplevel") or root).name,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}
