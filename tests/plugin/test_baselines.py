"""Regression tracking: --bbench-update-baselines, --bbench-compare, --bbench-save, tools/compare.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bbench.plugin.machine import machine_id

REPO = Path(__file__).resolve().parents[2]

pytest_plugins = ["pytester"]

GRID = """
CASES = [grid(methods=["Baseline", "MMPareto"], datasets=[SYN], undeclared="ignore",
              expect={"MMPareto": [above("train_flops", "Baseline")]})]
"""


@pytest.fixture
def baseline(cases):
    cases.declare(GRID)
    result = cases("--bbench-update-baselines")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["baseline updated: baselines/smoke.json (2 cases written)"])
    return json.loads(cases.baseline().read_text())


def test_update_writes_tracked_metrics_with_tolerances(cases, baseline):
    assert baseline["schema"] == "bbench.baselines/1" and baseline["profile"] == "smoke"
    assert set(baseline["cases"]) == {"Baseline-Syn", "MMPareto-Syn"}
    metrics = baseline["cases"]["MMPareto-Syn"]["metrics"]
    assert set(metrics) == {"acc", "f1", "imbalance", "train_flops", "num_params"}
    assert baseline["tolerances"]["train_flops"] == {"exact": True}
    acc = dict(baseline["tolerances"]["acc"])
    assert acc.pop("why") and acc == {"abs": 0.05, "samples": 2, "better": "higher"}
    # the split one sample's worth is computed from, beside the metrics
    assert baseline["cases"]["MMPareto-Syn"]["test_size"] == {"samples": 32, "classes": 4,
                                                              "min_class_support": 8}
    assert baseline["commit_info"] and baseline["machine_info"]["python_version"]


def test_compare_passes_on_an_unchanged_baseline(cases, baseline):
    result = cases("--bbench-compare")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["baseline: compared with baselines/smoke.json: 0 regression(s), "
                                 "0 improvement(s), 0 added, 0 removed"])


def test_an_edit_beyond_tolerance_fails_naming_case_metric_values_and_tolerance(cases, baseline):
    acc = baseline["cases"]["MMPareto-Syn"]["metrics"]["acc"]
    flops = baseline["cases"]["Baseline-Syn"]["metrics"]["train_flops"]
    cases.edit_baseline("MMPareto-Syn", "acc", acc + 0.07)
    cases.edit_baseline("Baseline-Syn", "train_flops", flops + 1)
    result = cases("--bbench-compare")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        f"MMPareto-Syn: acc regressed: observed {acc:.4f}, baseline {acc + 0.07:.4f} (difference "
        f"-0.0700; tolerance ±0.05 absolute or 2 test samples' worth (±0.0625 of 32 samples), "
        f"higher is better) [baselines/smoke.json]",
    ])
    result.stdout.fnmatch_lines([
        f"*Baseline-Syn: train_flops changed: observed {flops}, baseline {flops + 1} (difference -1; "
        f"tolerance exact)*"])
    result.stdout.fnmatch_lines(["*2 regression(s), 0 improvement(s)*"])


def test_within_tolerance_passes_and_improvements_are_reported_not_failed(cases, baseline):
    acc = baseline["cases"]["MMPareto-Syn"]["metrics"]["acc"]
    base_acc = baseline["cases"]["Baseline-Syn"]["metrics"]["acc"]
    cases.edit_baseline("MMPareto-Syn", "acc", acc + 0.04)  # within ±0.05
    cases.edit_baseline("Baseline-Syn", "acc", base_acc - 0.2)  # we are now 0.2 better
    result = cases("--bbench-compare")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*0 regression(s), 1 improvement(s)*",
                                 "  improvement: Baseline-Syn: acc improved: observed*"])


def test_added_and_removed_cases_are_listed_and_update_rewrites(cases, baseline):
    cases.edit_baseline("Ghost-Syn", "acc", 0.5)  # no longer declared
    cases.edit_baseline("MMPareto-Syn", "acc", None)  # not in the baseline yet
    result = cases("--bbench-compare")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*0 regression(s), 0 improvement(s), 1 added, 1 removed",
                                 "  added (no baseline entry): MMPareto-Syn",
                                 "  removed (in the baseline, no longer declared): Ghost-Syn"])
    # updating only one case keeps the other, drops the undeclared one, keeps tolerances
    doc = json.loads(cases.baseline().read_text())
    doc["tolerances"]["acc"] = {"abs": 0.1, "better": "higher"}
    cases.baseline().write_text(json.dumps(doc))
    result = cases("--bbench-update-baselines", "-k", "MMPareto")
    result.assert_outcomes(passed=1)
    doc = json.loads(cases.baseline().read_text())
    assert set(doc["cases"]) == {"Baseline-Syn", "MMPareto-Syn"}
    assert doc["tolerances"]["acc"] == {"abs": 0.1, "better": "higher"}


def test_one_test_samples_worth_comes_from_the_baselines_split(cases, baseline):
    """The baseline's test_size sets the worth: on a (pretend) 5-sample split, 0.2 is one sample."""
    acc = baseline["cases"]["MMPareto-Syn"]["metrics"]["acc"]
    doc = json.loads(cases.baseline().read_text())
    doc["cases"]["MMPareto-Syn"]["test_size"] = {"samples": 5, "classes": 4, "min_class_support": 1}
    doc["cases"]["MMPareto-Syn"]["metrics"]["acc"] = acc + 0.4  # two samples of 5: within tolerance
    doc["cases"]["Baseline-Syn"]["metrics"]["acc"] += 0.07  # 32 samples: 0.07 > max(0.05, 2/32)
    cases.baseline().write_text(json.dumps(doc))
    result = cases("--bbench-compare")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Baseline-Syn: acc regressed:*(difference -0.0700; tolerance ±0.05 "
                                 "absolute or 2 test samples' worth (±0.0625 of 32 samples)*"])
    doc["cases"]["MMPareto-Syn"]["metrics"]["acc"] = acc + 0.6  # three samples of 5: fails
    cases.baseline().write_text(json.dumps(doc))
    result = cases("--bbench-compare", "-k", "MMPareto")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*MMPareto-Syn: acc regressed:*(difference -0.6000; tolerance ±0.05 "
                                 "absolute or 2 test samples' worth (±0.4000 of 5 samples)*"])


def test_missing_default_baseline_is_a_usage_error_before_any_case_trains(cases):
    cases.declare(GRID)
    result = cases("--bbench-compare", "-k", "Baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: --bbench-compare: no baseline file at baselines/smoke.json (the smoke profile's "
        "baseline of cases_demo.py); create it with: pytest cases_demo.py "
        "--bbench-update-baselines, review it and commit it"])
    assert not cases.out.exists()  # nothing trained
    # the quick profile's message names the profile option too
    result = cases("--bbench-compare", "--bbench-profile", "quick", "-k", "Baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *baselines/quick.json*--bbench-update-baselines "
                                 "--bbench-profile quick*"])


def test_malformed_default_baseline_is_a_usage_error_naming_it(cases):
    cases.declare(GRID)
    cases.baseline().parent.mkdir()
    cases.baseline().write_text("{not json")
    for option in ("--bbench-compare", "--bbench-update-baselines"):
        result = cases(option, "-k", "Baseline")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: {option}: baselines/smoke.json: not valid JSON (*"])
    assert not cases.out.exists()


BAD_FILES = {
    "not JSON": ("[1, 2", "not valid JSON"),
    "wrong schema": ('{"schema": "bbench.other/1"}', "unknown result schema 'bbench.other/1'"),
    "not an object": ("[1, 2]", "expected a JSON object with a 'schema' key, got list"),
    "bad tolerance": ('{"schema": "bbench.baselines/1", "tolerances": {"acc": {"abs": 0.05, '
                      '"sample": 1}}, "cases": {}}', "tolerances: acc: unknown key(s) sample"),
    "bad samples": ('{"schema": "bbench.baselines/1", "tolerances": {"acc": {"samples": -1}}}',
                    "tolerances: acc: tolerance 'samples' must be a whole number >= 0"),
    "bad entry": ('{"schema": "bbench.baselines/1", "cases": {"Baseline-Syn": {"metrics": '
                  '{"acc": "high"}}}}', "Baseline-Syn: metrics: not numbers"),
    "bad test_size": ('{"schema": "bbench.baselines/1", "cases": {"Baseline-Syn": {"metrics": {}, '
                      '"test_size": {"samples": 12}}}}', "Baseline-Syn: test_size: expected"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_malformed_compare_file_is_a_usage_error_at_session_start(cases, kind):
    text, reason = BAD_FILES[kind]
    cases.declare(GRID)
    (cases.pytester.path / "other.json").write_text(text)
    result = cases("--bbench-compare=other.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --bbench-compare=other.json: other.json: *{reason}*"])
    assert not cases.out.exists()  # found before collection: nothing trained


def test_save_numbers_sessions_and_compare_accepts_a_save(cases):
    cases.declare(GRID)
    cases("--bbench-save", "first").assert_outcomes(passed=2)
    result = cases("--bbench-save", "second", "-k", "Baseline")
    folder = cases.pytester.path / ".bbench" / machine_id()
    assert sorted(p.name for p in folder.iterdir()) == ["0001_first.json", "0002_second.json"]
    result.stdout.fnmatch_lines([f"saved: .bbench/{machine_id()}/0002_second.json"])
    doc = json.loads((folder / "0001_first.json").read_text())
    assert doc["schema"] == "bbench.session/1" and doc["name"] == "first"
    assert {c["case"] for c in doc["cases"]} == {"Baseline-Syn", "MMPareto-Syn"}
    assert doc["machine_info"]["system"] and "commit_info" in doc  # (no git here: an error entry)
    result = cases("--bbench-compare=1")  # by number, as pytest-benchmark
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"baseline: compared with .bbench/{machine_id()}/0001_first.json: "
                                 f"0 regression(s)*"])

    # tools/compare.py: the same report for any two files (no torch import needed)
    a, b = folder / "0001_first.json", folder / "0002_second.json"
    data = json.loads(b.read_text())
    data["cases"][0]["metrics"]["train_flops"] += 10
    b.write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(REPO / "tools" / "compare.py"), str(a), str(b)],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "1 case(s) compared, 1 regression(s), 0 improvement(s), 0 added, 1 removed" in out.stdout
    assert "Baseline-Syn: train_flops changed" in out.stdout and "tolerance exact" in out.stdout
    assert "Cases removed (in A, not in B): MMPareto-Syn" in out.stdout
