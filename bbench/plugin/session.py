"""Per-session state of the plugin: options, case results, compare sources and baselines."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import pytest

from bbench.cases.dsl import PROFILES as PROFILE_NAMES
from bbench.plugin.machine import SAVE_FILE, SAVE_NAME, STORAGE, machine_id
from bbench.plugin.utils import relative


@dataclass
class CaseResult:
    """What the controller knows of one case (from its reports)."""

    case: str
    outcome: str
    payload: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    duration: float = 0.0


class BBenchState:
    """Per-session state of the plugin (one per process; the xdist controller aggregates)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        opt = config.option
        self.profile_name: str = opt.bbench_profile or config.getini("bbench_profile") or "smoke"
        if self.profile_name not in PROFILE_NAMES:
            raise pytest.UsageError(f"bbench_profile = {self.profile_name!r}: choose one of "
                                    f"{', '.join(PROFILE_NAMES)}")
        if opt.bbench_save is not None and not SAVE_NAME.match(opt.bbench_save):
            raise pytest.UsageError(f"--bbench-save {opt.bbench_save!r}: use letters, digits, '.', "
                                    f"'_' and '-' only")
        data_root = opt.bbench_data_root or os.environ.get("BBENCH_DATA") or None
        self.data_root = Path(data_root).expanduser() if data_root else None
        self.device: str | None = opt.bbench_device
        self.save_name: str | None = opt.bbench_save
        self.compare: str | None = opt.bbench_compare
        self.update: bool = bool(opt.bbench_update_baselines)
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.worker_id = workerinput["workerid"] if workerinput else "main"
        if workerinput:
            self.session_id = workerinput.get("bbench_session") or f"xdist-{workerinput['testrunuid'][:8]}"
        else:
            self.session_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        out = Path(opt.bbench_out) if opt.bbench_out else config.rootpath / STORAGE / "runs" / self.session_id
        self.out_root = out if out.is_absolute() else Path.cwd() / out
        self.out_dir = self.out_root / self.worker_id
        self._runner: Any = None
        self._baselines: dict[str, Any] = {}
        # baseline file -> every case id its declaration file declares (before -k/-m selection)
        self.declared: dict[str, set[str]] = {}
        self.excluded: dict[str, str] = {}
        self.results: dict[str, CaseResult] = {}
        self.written: list[str] = []
        self.compare_file = self.resolve_saved(self.compare) if self.compare else None
        if self.compare_file is not None:  # a bad file fails now, not after every case trained
            self.checked_baseline(self.compare_file, f"--bbench-compare={self.compare}")

    @property
    def runner(self) -> Any:
        if self._runner is None:
            from bbench.cases.execute import CaseRunner
            from bbench.cases.profiles import PlanContext, get_profile

            ctx = PlanContext(self.profile_name, self.data_root, self.device, self.out_dir / "_work")
            self._runner = CaseRunner(get_profile(self.profile_name), ctx, self.out_dir)
        return self._runner

    # -- baselines --------------------------------------------------------------------------
    def default_baseline(self, declaration: Path) -> Path:
        return Path(declaration).parent / "baselines" / f"{self.profile_name}.json"

    def compare_source(self, declaration: Path) -> Path | None:
        """The file this case is compared against, or None when not comparing."""
        if self.compare is None and not self.update:
            return None
        if self.compare_file is not None:
            return self.compare_file
        return self.default_baseline(declaration)

    def resolve_saved(self, spec: str) -> Path:
        """A path, or the number (`3`, `0003`) or name of a save of this machine."""
        path = Path(spec)
        if path.is_dir() and not (path / "record.json").is_file():
            raise pytest.UsageError(
                f"--bbench-compare took {spec!r} (a directory) as the file to compare with; put the "
                f"test paths first (pytest cases --bbench-compare) or write --bbench-compare=FILE")
        if path.suffix == ".json" or path.exists():
            path = path if path.is_absolute() else Path.cwd() / path
            if not path.exists():
                raise pytest.UsageError(f"--bbench-compare={spec}: no such file")
            return path
        folder = self.config.rootpath / STORAGE / machine_id()
        saves = sorted(folder.glob("*.json")) if folder.is_dir() else []
        for p in reversed(saves):
            m = SAVE_FILE.match(p.name)
            if m and ((spec.isdigit() and int(m.group(1)) == int(spec)) or m.group(2) == spec):
                return p
        raise pytest.UsageError(f"--bbench-compare={spec}: no such file, and no save numbered or named "
                                f"{spec!r} in {folder}")

    def baseline_table(self, path: Path) -> Any:
        """The loaded table (cached), or None when the file does not exist."""
        from bbench.report.compare import load_table

        key = str(path)
        if key not in self._baselines:
            self._baselines[key] = load_table(path) if path.exists() else None
        return self._baselines[key]

    def checked_baseline(self, path: Path, what: str) -> Any:
        """`baseline_table`, with an unreadable or malformed file as one UsageError naming it."""
        try:
            return self.baseline_table(path)
        except (OSError, ValueError) as err:
            text = str(err).replace(str(path), relative(path, self.config.rootpath))
            raise pytest.UsageError(f"{what}: {text}") from None

    def check_default_baselines(self, declarations: Iterable[Path]) -> None:
        """At collection end: the default baseline of every declaration file with selected
        cases must load (and exist, unless --bbench-update-baselines creates it), so that a
        missing or malformed baseline fails the session before any case trains."""
        if self.compare_file is not None or (self.compare is None and not self.update):
            return
        root = self.config.rootpath
        for declaration in sorted(set(declarations)):
            path = self.default_baseline(declaration)
            option = "--bbench-update-baselines" if self.update else "--bbench-compare"
            table = self.checked_baseline(path, option)
            if table is None and not self.update:
                decl = relative(declaration, root)
                raise pytest.UsageError(
                    f"--bbench-compare: no baseline file at {relative(path, root)} (the "
                    f"{self.profile_name} profile's baseline of {decl}); create it with: "
                    f"pytest {decl} --bbench-update-baselines"
                    f"{'' if self.profile_name == 'smoke' else ' --bbench-profile ' + self.profile_name}"
                    f", review it and commit it")
