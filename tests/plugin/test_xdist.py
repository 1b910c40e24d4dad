"""Cases under pytest-xdist: every worker writes its own runs, the controller aggregates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbench.plugin.machine import machine_id

REPO = Path(__file__).resolve().parents[2]

pytest_plugins = ["pytester"]


@pytest.mark.slow
def test_two_workers_run_every_case_without_clobbering_and_save_once(cases, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cases.declare("""
    SYN3 = dataset("synthetic", "Syn3", modalities=("a", "b", "c"),
                   smoke={**SMALL, "dataset.options": {**SMALL["dataset.options"], "informativeness": 0.5}})
    CASES = [grid(methods=["Baseline", "OGM", "MMPareto", "Unimodal"], datasets=[SYN, SYN3],
                  undeclared="ignore", per_modality={"Unimodal": "modality"},
                  expect={"MMPareto": [above("train_flops")]})]
    """)
    result = cases("-n", "2", "--bbench-save", "par", "--bbench-update-baselines", subprocess=True)
    result.assert_outcomes(passed=11)
    result.stdout.fnmatch_lines(["*bbench: smoke profile, 11 case(s)*",
                                 "baseline updated: baselines/smoke.json (11 cases written)"])
    assert sorted(p.name for p in cases.out.iterdir()) == ["gw0", "gw1"]  # one folder per worker
    records = list(cases.out.rglob("record.json"))
    assert len(records) >= 11 and len({r.parent for r in records}) == len(records)
    save = json.loads((cases.pytester.path / ".bbench" / machine_id() / "0001_par.json").read_text())
    assert len(save["cases"]) == 11 and all(c["outcome"] == "passed" for c in save["cases"])
    result = cases("-n", "2", "--bbench-compare", subprocess=True)
    result.assert_outcomes(passed=11)
    result.stdout.fnmatch_lines(["*0 regression(s), 0 improvement(s), 0 added, 0 removed"])


@pytest.mark.slow
def test_a_missing_baseline_is_a_usage_error_under_xdist_too(cases, monkeypatch):
    """The controller collects nothing: it checks the workers' collections before scheduling."""
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cases.declare('CASES = [grid(methods=["Baseline"], datasets=[SYN], undeclared="ignore")]')
    result = cases("-n", "2", "--bbench-compare", subprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --bbench-compare: no baseline file at baselines/smoke.json*"
                                 "--bbench-update-baselines*"])
    assert not cases.out.exists()
