"""Result storage of the plugin: saved sessions and baseline updates."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bbench.plugin.machine import SAVE_FILE, STORAGE, commit_info, machine_id, machine_info
from bbench.plugin.session import BBenchState, CaseResult


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
    from bbench.results.files import write_json  # bbench.results imports torch: only here

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
        write_json(path, doc, "baseline file")
        written.append((path, len(results)))
    return written
