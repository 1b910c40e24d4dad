"""bbench's pytest plugin: benchmark cases as pytest items.

    pytest cases -k "MMPareto and CREMAD"          # train that pair, assert its properties
    pytest cases -m "case(method='OGM')"             # every OGM case
    pytest cases --bbench-compare                   # ... and fail on regressions vs the baseline

Registered through the `pytest11` entry point as `bbench` (`-p no:bbench` disables it);
without the entry point, load it with `-p bbench.pytest_plugin`. Case declarations are the
files matching the ini option `bbench_case_files` (default `cases_*.py`); plain `pytest` in
the repository only collects them when asked (`testpaths = tests`). This module imports
neither torch nor the training code at start-up: only collecting or running a case does.

Results reach the controller (also under pytest-xdist) through each report's
`user_properties` (so JUnit XML carries them): `bbench.case`, `bbench.record`, one
`bbench.<metric>` per tracked metric, and `bbench.result` (everything, as JSON).

This module holds the hooks and the items; the session state, the result storage and the
terminal tables are in `bbench.plugin` (session, storage, table). See docs/cases.md.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from bbench.cases.dsl import PROFILES as PROFILE_NAMES
from bbench.plugin.session import BBenchState, CaseResult
from bbench.plugin.machine import STORAGE
from bbench.plugin.storage import update_baselines, write_save
from bbench.plugin.table import comparison_lines, summary_table
from bbench.plugin.utils import relative

DEFAULT_CASE_FILES = "cases_*.py"


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
        "plugin; select with -m \"case(method='NAME')\" or -m \"case(dataset='mfeat')\")")
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
        rel = relative(source, self.config.rootpath)
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
        header.append(f"  declared at: {relative(Path(self.case.origin.path), self.config.rootpath)}:"
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
        lines.append(f"  record: {relative(Path(o.result.record_path), root)}")
        for what, path in o.references.items():
            lines.append(f"  {what}: {relative(Path(path), root)}")
        lines.append(f"  declared at: {relative(Path(self.case.origin.path), root)}:{self.case.origin.line}")
        lines.append(f"  run: bbench.run({o.plan.method!r}, {o.plan.dataset!r}, **{o.plan.kwargs()!r})")
        return "\n".join(lines)


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
            state.written.append(f"saved: {relative(write_save(state), session.config.rootpath)}")
        if state.update and ran:
            for path, count in update_baselines(state):
                state.written.append(f"baseline updated: {relative(path, session.config.rootpath)} "
                                     f"({count} case{'s' if count != 1 else ''} written)")

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        state = self.state
        if state.is_worker or not state.results:
            return
        tr = terminalreporter
        tr.write_sep("=", f"bbench: {state.profile_name} profile, {len(state.results)} case(s)")
        tr.write_line(summary_table(state))
        if any(r.payload for r in state.results.values()):
            tr.write_line(f"runs: {relative(state.out_root, config.rootpath)}")
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
