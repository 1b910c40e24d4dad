"""bbench's pytest plugin: benchmark cases as pytest items.

    pytest cases -k "MMPareto and CREMAD"          # train that pair, assert its properties
    pytest cases -m "case(method='OGM')"            # every OGM case
    pytest cases --bbench-compare                   # ... and fail on regressions vs the baseline

Registered through the `pytest11` entry point as `bbench` (`-p no:bbench` disables it);
without the entry point, load it with `-p bbench.pytest_plugin`. Case declarations are the
files matching the ini option `bbench_case_files` (default `cases_*.py`); plain `pytest` in
the repository only collects them when asked (`testpaths = tests`). This module imports
neither torch nor the training code at start-up: only collecting or running a case does.

Results reach the controller (also under pytest-xdist) through each report's
`user_properties` (so JUnit XML carries them): `bbench.case`, `bbench.record`, one
`bbench.<metric>` per tracked metric, and `bbench.result` (everything, as JSON).
See docs/cases.md.
"""
from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from bbench.cases.dsl import PROFILES as PROFILE_NAMES

DEFAULT_CASE_FILES = "cases_*.py"
STORAGE = ".bbench"
SAVE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SAVE_FILE = re.compile(r"^(\d{4})_(.+)\.json$")


# --- options and configuration ----------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bbench", "bbench benchmark cases (docs/cases.md)")
    group.addoption("--bbench-profile", choices=PROFILE_NAMES, default=None,
                    help="case profile: smoke (default; CPU, seconds per case), quick (mfeat, "
                         "enough epochs for methods to separate), paper (the paper's presets on "
                         "the real data, GPU)")
    group.addoption("--bbench-data-root", metavar="DIR", default=None,
                    help="root of the real datasets for the paper profile (DIR/<dataset id>); "
                         "default: $BBENCH_DATA")
    group.addoption("--bbench-device", metavar="DEVICE", default=None,
                    help="device of every case run (cpu, cuda, cuda:1); default: the profile's")
    group.addoption("--bbench-save", metavar="NAME", default=None,
                    help=f"save the session's results as {STORAGE}/<machine id>/<NNNN>_NAME.json")
    group.addoption("--bbench-compare", metavar="BASELINE", nargs="?", const="", default=None,
                    help="compare every case with its committed baseline (cases/baselines/"
                         "<profile>.json next to the declarations) and fail on regressions beyond "
                         "tolerance; or with BASELINE: a baseline/saved file, or the number or name "
                         f"of a save in {STORAGE}/<machine id>/ (write --bbench-compare=BASELINE)")
    group.addoption("--bbench-update-baselines", action="store_true", default=False,
                    help="rewrite the committed baselines of the profile with this session's "
                         "results (cases that ran and passed their properties)")
    group.addoption("--bbench-out", metavar="DIR", default=None,
                    help=f"where case runs are written (default {STORAGE}/runs/<session id>); "
                         "one subdirectory per worker, never reused")
    parser.addini("bbench_case_files", "glob of benchmark case declaration files",
                  default=DEFAULT_CASE_FILES)
    parser.addini("bbench_profile", "default bbench case profile", default="smoke")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "case(method, dataset, family, modality): a bbench benchmark case (added by the bbench "
        "plugin; select with -m \"case(method='OGM')\" or -m \"case(dataset='mfeat')\")")
    state = BBenchState(config)
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(SessionHooks(state), "bbench-session")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state), "bbench-xdist")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".py" and fnmatch.fnmatch(file_path.name,
                                                     parent.config.getini("bbench_case_files")):
        return CaseFile.from_parent(parent, path=file_path)
    return None


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
            text = str(err).replace(str(path), _relative(path, self.config.rootpath))
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
                decl = _relative(declaration, root)
                raise pytest.UsageError(
                    f"--bbench-compare: no baseline file at {_relative(path, root)} (the "
                    f"{self.profile_name} profile's baseline of {decl}); create it with: "
                    f"pytest {decl} --bbench-update-baselines"
                    f"{'' if self.profile_name == 'smoke' else ' --bbench-profile ' + self.profile_name}"
                    f", review it and commit it")


STATE_KEY = pytest.StashKey[BBenchState]()


def _state(config: pytest.Config) -> BBenchState:
    return config.stash[STATE_KEY]


# --- collection -------------------------------------------------------------------------------

class CaseFile(pytest.File):
    """A declaration file; its items are the concrete cases."""

    def collect(self) -> Iterator[pytest.Item]:
        from bbench.cases.collect import load_declarations
        from bbench.cases.dsl import DeclarationError

        state = _state(self.config)
        try:
            decls = load_declarations(self.path)
        except DeclarationError as err:
            raise self.CollectError(f"{self.path}: {err}") from None
        baseline = str(state.default_baseline(self.path))
        state.declared.setdefault(baseline, set()).update(c.id for c in decls.cases)
        state.excluded.update(decls.excluded)
        with_xdist = self.config.pluginmanager.hasplugin("xdist")
        for case in decls.cases:
            yield CaseItem.from_parent(self, name=case.id, case=case, xdist_group=with_xdist)


class CaseItem(pytest.Item):
    """One benchmark case: plan (setup), run and check (call)."""

    def __init__(self, *, case: Any, xdist_group: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        marker: dict[str, Any] = {"method": case.method, "dataset": case.dataset.name,
                                  "family": case.family}
        if case.modality is not None:
            marker["modality"] = case.modality
        self.add_marker(pytest.mark.case(**marker))
        if case.skip:
            self.add_marker(pytest.mark.skip(reason=case.skip))
        if xdist_group:  # with --dist loadgroup, a dataset's cases share one worker and its cache
            self.add_marker(pytest.mark.xdist_group(case.dataset.token))
        self.user_properties.append(("bbench.case", case.id))
        self.plan: Any = None

    def setup(self) -> None:
        from bbench.cases.profiles import CaseSkipped

        state = _state(self.config)
        try:
            self.plan = state.runner.plan(self.case)
        except CaseSkipped as skip:
            pytest.skip(str(skip))

    def runtest(self) -> None:
        from bbench.cases.expectations import Check
        from bbench.report.compare import tracked_metrics

        state = _state(self.config)
        outcome = state.runner.execute(self.case, self.plan)
        failing = [c for c in outcome.checks if not c.ok]
        tracked = tracked_metrics(outcome.metrics)
        comparison = self._compare(state, tracked, outcome.metrics.get("test_size"))
        if comparison.get("error"):
            failing.append(Check("baseline", False, kind="baseline", detail=comparison["error"]))
        elif not state.update:
            for d in comparison.get("deltas", []):
                if d["status"] in ("regression", "missing"):
                    failing.append(Check(f"{d['metric']} vs baseline", False, kind="baseline",
                                         detail=d["message"]))
        payload = {
            "case": self.case.id, "method": self.case.method, "dataset": self.case.dataset.name,
            "profile": state.profile_name, "data": outcome.plan.data, "note": outcome.plan.note,
            "run_dataset": outcome.plan.dataset, "record": str(outcome.result.record_path),
            "reused": outcome.reused, "seconds": outcome.seconds, "metrics": outcome.metrics,
            "checks": [c.to_json() for c in outcome.checks], "references": outcome.references,
            "baseline_file": str(state.default_baseline(self.path)), "comparison": comparison,
            "passed": not failing,
        }
        props = [("bbench.profile", state.profile_name), ("bbench.data", outcome.plan.data),
                 ("bbench.record", str(outcome.result.record_path))]
        props += [(f"bbench.{k}", v) for k, v in tracked.items()]
        props.append(("bbench.result", json.dumps(payload, default=str)))
        self.user_properties.extend(props)
        if failing:
            raise CaseFailed(self.case, outcome, failing)

    def _compare(self, state: BBenchState, tracked: dict[str, Any],
                 test_size: dict[str, Any] | None = None) -> dict[str, Any]:
        from bbench.report.compare import compare_metrics

        source = state.compare_source(self.path)
        if source is None:
            return {}
        table = state.baseline_table(source)
        if table is None:
            if state.update:
                return {"source": str(source), "status": "added", "deltas": []}
            return {"source": str(source), "error": (
                f"no baseline file at {source}; create it with --bbench-update-baselines "
                f"(profile {state.profile_name})")}
        if self.case.id not in table.cases:
            return {"source": str(source), "status": "added", "deltas": []}
        deltas = compare_metrics(self.case.id, table.cases[self.case.id], tracked,
                                 table.tolerances_of(self.case.id),
                                 test_size=table.test_sizes.get(self.case.id),
                                 observed_test_size=test_size)
        statuses = {d.status for d in deltas}
        status = ("regression" if statuses & {"regression", "missing"} else
                  "improvement" if "improvement" in statuses else "ok")
        rel = _relative(source, self.config.rootpath)
        return {"source": str(source), "status": status,
                "deltas": [{**d.to_json(), "message": d.message(rel)} for d in deltas]}

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailed):
            return excinfo.value.render(self.config.rootpath)
        header = [f"case {self.case.id} (profile {_state(self.config).profile_name}) raised "
                  f"{type(excinfo.value).__name__}: {excinfo.value}"]
        if self.plan is not None:
            header.append(f"  run: bbench.run({self.plan.method!r}, {self.plan.dataset!r}, "
                          f"**{self.plan.kwargs()!r})")
        header.append(f"  declared at: {_relative(Path(self.case.origin.path), self.config.rootpath)}:"
                      f"{self.case.origin.line}")
        return "\n".join(header) + "\n\n" + str(super().repr_failure(excinfo, style="short"))

    def _traceback_filter(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:
        """Start the traceback at runtest: pytest's and pluggy's frames say nothing here."""
        traceback = excinfo.traceback
        cut = traceback.cut(path=Path(__file__))
        return (cut if len(cut) < len(traceback) else traceback).filter(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        origin = Path(self.case.origin.path)
        if not origin.is_file():
            return self.path, 0, f"case {self.case.id}"
        return origin, max(self.case.origin.line - 1, 0), f"case {self.case.id}"


class CaseFailed(AssertionError):
    """Some properties of a case did not hold."""

    def __init__(self, case: Any, outcome: Any, failing: list[Any]) -> None:
        super().__init__(f"{case.id}: {len(failing)} propert{'y' if len(failing) == 1 else 'ies'} failed")
        self.case = case
        self.outcome = outcome
        self.failing = failing

    def render(self, root: Path) -> str:
        o = self.outcome
        total = len(o.checks) + sum(1 for c in self.failing if c.kind == "baseline")
        first = self.failing[0]
        # The first line is what `pytest -r` shows in its short summary: the first failure.
        lines = [(first.summary() if first.kind == "baseline" else f"{self.case.id}: {first.summary()}")
                 + (f" (and {len(self.failing) - 1} more)" if len(self.failing) > 1 else ""),
                 f"case {self.case.id} (profile {o.plan.profile}, data: {o.plan.data}"
                 f"{' ' + o.plan.note if o.plan.note else ''}): {len(self.failing)} of {total} "
                 f"properties failed"]
        for c in self.failing:
            lines.append(f"  {c.line()}")
        lines.append(f"  record: {_relative(Path(o.result.record_path), root)}")
        for what, path in o.references.items():
            lines.append(f"  {what}: {_relative(Path(path), root)}")
        lines.append(f"  declared at: {_relative(Path(self.case.origin.path), root)}:{self.case.origin.line}")
        lines.append(f"  run: bbench.run({o.plan.method!r}, {o.plan.dataset!r}, **{o.plan.kwargs()!r})")
        return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


# --- reports (controller side; also the single process without xdist) -----------------------

class SessionHooks:
    """The per-session hooks, bound to this config's state (registered in pytest_configure)."""

    def __init__(self, state: BBenchState) -> None:
        self.state = state

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.state.is_worker:  # under xdist the controller checks (XdistHooks)
            return
        self.state.check_default_baselines(item.path for item in session.items
                                           if isinstance(item, CaseItem) and not item.case.skip)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = self.state
        props = dict(report.user_properties or [])
        case_id = props.get("bbench.case")
        if not case_id or state.is_worker:
            return
        if report.when == "call":
            payload = json.loads(props["bbench.result"]) if "bbench.result" in props else {}
            state.results[case_id] = CaseResult(case_id, report.outcome, payload, duration=report.duration)
        elif report.when == "setup" and report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            state.results[case_id] = CaseResult(case_id, "skipped", reason=reason.removeprefix("Skipped: "))
        elif report.failed and case_id not in state.results:
            state.results[case_id] = CaseResult(case_id, "error", duration=report.duration)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        state = self.state
        if state.is_worker:
            session.config.workeroutput["bbench_declared"] = {k: sorted(v) for k, v in state.declared.items()}
            session.config.workeroutput["bbench_excluded"] = dict(state.excluded)
            return
        ran = [r for r in state.results.values() if r.payload.get("metrics")]
        if state.save_name and ran:
            state.written.append(f"saved: {_relative(write_save(state), session.config.rootpath)}")
        if state.update and ran:
            for path, count in update_baselines(state):
                state.written.append(f"baseline updated: {_relative(path, session.config.rootpath)} "
                                     f"({count} case{'s' if count != 1 else ''} written)")

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        state = self.state
        if state.is_worker or not state.results:
            return
        tr = terminalreporter
        tr.write_sep("=", f"bbench: {state.profile_name} profile, {len(state.results)} case(s)")
        tr.write_line(summary_table(state))
        if any(r.payload for r in state.results.values()):
            tr.write_line(f"runs: {_relative(state.out_root, config.rootpath)}")
        for line in comparison_lines(state):
            tr.write_line(line)
        if state.excluded:
            tr.write_line("datasets not in the grid: " + "; ".join(
                f"{k} ({v})" for k, v in sorted(state.excluded.items())))
        for line in state.written:
            tr.write_line(line)


class XdistHooks:
    """Hooks that exist only with pytest-xdist (registered when it is active)."""

    def __init__(self, state: BBenchState) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["bbench_session"] = self.state.session_id

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # The controller collects nothing itself; it checks the baselines of the declaration
        # files the workers collected, before it schedules any case (a UsageError raised on a
        # worker would only end that worker: "no active workers available").
        glob = self.state.config.getini("bbench_case_files")
        files = {nodeid.split("::", 1)[0] for nodeid in ids}
        self.state.check_default_baselines(self.state.config.rootpath / f for f in files
                                           if fnmatch.fnmatch(Path(f).name, glob))

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        for path, ids in (output.get("bbench_declared") or {}).items():
            self.state.declared.setdefault(path, set()).update(ids)
        self.state.excluded.update(output.get("bbench_excluded") or {})


# --- save, update ---------------------------------------------------------------------------

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


def session_document(state: BBenchState) -> dict[str, Any]:
    from bbench.report.compare import SESSION_SCHEMA

    cases = []
    for r in state.results.values():
        entry: dict[str, Any] = {"case": r.case, "outcome": r.outcome}
        if r.payload:
            entry.update({k: r.payload.get(k) for k in ("method", "dataset", "data", "run_dataset",
                                                        "record", "seconds", "metrics")})
            entry["comparison"] = r.payload.get("comparison", {}).get("status")
        if r.reason:
            entry["reason"] = r.reason
        cases.append(entry)
    return {"schema": SESSION_SCHEMA, "name": state.save_name, "profile": state.profile_name,
            "datetime": datetime.now(timezone.utc).isoformat(), "session": state.session_id,
            "machine_info": machine_info(), "commit_info": commit_info(state.config.rootpath),
            "cases": cases}


def write_save(state: BBenchState) -> Path:
    folder = state.config.rootpath / STORAGE / machine_id()
    folder.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(session_document(state), indent=1, default=str)
    while True:  # pytest-benchmark's layout: the next free four-digit counter
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := SAVE_FILE.match(p.name))]
        path = folder / f"{max(numbers, default=0) + 1:04d}_{state.save_name}.json"
        try:
            with open(path, "x") as fh:
                fh.write(doc)
            return path
        except FileExistsError:  # another session took the number
            continue


def update_baselines(state: BBenchState) -> list[tuple[Path, int]]:
    """Rewrite each touched baseline: this session's passing cases, others kept, undeclared dropped."""
    from bbench.report.compare import BASELINE_SCHEMA, baseline_json, table_from_json, tracked_metrics

    by_file: dict[str, list[CaseResult]] = {}
    for r in state.results.values():
        if r.payload.get("metrics") and r.payload.get("passed", r.outcome == "passed"):
            by_file.setdefault(r.payload["baseline_file"], []).append(r)
    written = []
    for file, results in by_file.items():
        path = Path(file)
        tolerances, case_tolerances, cases, sizes = None, {}, {}, {}
        if path.exists():
            old = json.loads(path.read_text())
            if not isinstance(old, dict) or old.get("schema") != BASELINE_SCHEMA:
                schema = old.get("schema") if isinstance(old, dict) else None
                raise pytest.UsageError(f"{path} is not a bbench baseline file (schema {schema!r})")
            table = table_from_json(old, str(path))
            tolerances, case_tolerances, cases = table.tolerances, table.case_tolerances, table.cases
            sizes = table.test_sizes
        declared = state.declared.get(file)
        if declared is not None:
            cases = {c: m for c, m in cases.items() if c in declared}
        for r in results:
            cases[r.case] = tracked_metrics(r.payload["metrics"])
            size = r.payload["metrics"].get("test_size")
            if isinstance(size, dict):  # the split one sample's worth is computed from
                sizes[r.case] = size
            else:
                sizes.pop(r.case, None)
        doc = baseline_json(cases, profile=state.profile_name, tolerances=tolerances,
                            case_tolerances=case_tolerances,
                            test_sizes={c: s for c, s in sizes.items() if c in cases}, meta={
                                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "machine_info": machine_info(),
                                "commit_info": commit_info(state.config.rootpath)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
        written.append((path, len(results)))
    return written


# --- terminal summary -----------------------------------------------------------------------

def summary_table(state: BBenchState) -> str:
    """The cases that ran (table), then the skipped ones grouped by reason."""
    from tabulate import tabulate

    rows, skipped = [], {}
    for r in state.results.values():
        if r.outcome == "skipped":
            skipped.setdefault(r.reason, []).append(r.case)
            continue
        m = r.payload.get("metrics", {})
        acc = _num(m.get("acc"))
        if acc == "" and any(k.startswith("probe_acc_") for k in m):
            acc = "probe " + "/".join(f"{v:.3f}" for k, v in m.items() if k.startswith("probe_acc_"))
        comp = r.payload.get("comparison", {}) or {}
        vs = comp.get("status", "") if not comp.get("error") else "no baseline"
        if vs == "regression":
            vs = "REGRESSION: " + ", ".join(d["metric"] for d in comp.get("deltas", [])
                                            if d["status"] in ("regression", "missing"))
        elif vs == "improvement":
            vs = "improved: " + ", ".join(d["metric"] for d in comp.get("deltas", [])
                                          if d["status"] == "improvement")
        rows.append([r.case, r.outcome, r.payload.get("data", ""), acc, _num(m.get("f1")),
                     _num(m.get("imbalance")), _flops(m.get("train_flops")), vs,
                     f"{r.duration:.1f}" if r.payload else ""])
    lines = []
    if rows:
        headers = ["case", "result", "data", "acc", "F1", "I", "train FLOPs", "vs baseline", "s"]
        lines.append(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    for reason, cases in skipped.items():
        shown = ", ".join(cases[:6]) + (f", … ({len(cases) - 6} more)" if len(cases) > 6 else "")
        lines.append(f"skipped {len(cases)}: {reason}: {shown}")
    return "\n".join(lines)


def comparison_lines(state: BBenchState) -> list[str]:
    from bbench.report.compare import Delta

    compared = [r for r in state.results.values() if (r.payload.get("comparison") or {}).get("source")]
    if not compared:
        return []
    root = state.config.rootpath
    sources = sorted({r.payload["comparison"]["source"] for r in compared})
    regressions, improvements, added = [], [], []
    for r in compared:
        comp = r.payload["comparison"]
        if comp.get("status") == "added":
            added.append(r.case)
        for d in comp.get("deltas", []):
            delta = Delta.from_json(d)
            if delta.failing:
                regressions.append(d["message"])
            elif delta.status == "improvement":
                improvements.append(d["message"])
    removed: list[str] = []
    everything = set().union(*state.declared.values()) if state.declared else set()
    for source in sources:
        table = state.baseline_table(Path(source))
        declared = state.declared.get(source, everything)  # a default baseline: its own file's cases
        if table is not None:
            removed += [c for c in table.cases if c not in declared]
    verb = "updating" if state.update else "compared with"
    lines = [f"baseline: {verb} {', '.join(_relative(Path(s), root) for s in sources)}: "
             f"{len(regressions)} regression(s), {len(improvements)} improvement(s), "
             f"{len(added)} added, {len(removed)} removed"]
    lines += [f"  regression: {m}" for m in regressions]
    lines += [f"  improvement: {m}" for m in improvements]
    if added:
        lines.append("  added (no baseline entry): " + _some(added))
    if removed:
        lines.append("  removed (in the baseline, no longer declared): " + _some(removed))
    return lines


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _flops(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{unit}"
    return str(value)


def _some(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
