"""An OS-level lock on a run directory for the lifetime of the process that trains in it.

Two processes in one run directory (a `--resume` of a run that is still training) would
race on the checkpoint and both report results. The lock is `fcntl.flock` on
`<run_dir>/.lock`: the kernel releases it when its holder exits, however it exits, so a
crashed run never leaves a stale lock. The file holds the holder's PID, host and start
time so the refused process can say who holds it. (`filelock` truncates the lock file on
every attempt, which would erase exactly that; hence the few lines here.)
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """`with RunLock(run_dir): ...` holds the directory or raises RunLockedError at once."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise RunLockedError(f"run directory {self.path.parent} is in use by {holder}; wait for "
                                 f"that run to finish (or stop it) before resuming or reusing "
                                 f"the directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode())
        return (f"process {info['pid']} on host {info['host']} (since {info['since']}: "
                f"{info['command']})")
    except (ValueError, KeyError, UnicodeDecodeError):
        return "another process (it has not written its PID yet)"
