"""bbench.report.compare: tolerances, statuses, the three file kinds, the report text."""
from __future__ import annotations

import json

import pytest

from bbench.report.compare import (
    DEFAULT_TOLERANCES, Tolerance, baseline_json, compare_metrics, compare_tables, format_report,
    load_table, parse_tolerances, table_from_json, tolerance_for, tracked_metrics)


def statuses(baseline, observed, tolerances=DEFAULT_TOLERANCES):
    return {d.metric: d.status for d in compare_metrics("X-Y", baseline, observed, tolerances)}


@pytest.mark.parametrize("base,obs,status", [
    (0.90, 0.86, "ok"), (0.90, 0.95, "ok"), (0.90, 0.84, "regression"), (0.90, 0.96, "improvement"),
    (0.90, 0.85, "ok"),  # exactly at the tolerance
])
def test_accuracy_moves_within_or_beyond_its_absolute_tolerance(base, obs, status):
    assert statuses({"acc": base}, {"acc": obs}) == {"acc": status}


def test_counts_are_exact_and_directionless_metrics_fail_both_ways():
    assert statuses({"train_flops": 100}, {"train_flops": 100}) == {"train_flops": "ok"}
    assert statuses({"train_flops": 100}, {"train_flops": 99}) == {"train_flops": "regression"}
    assert statuses({"num_params": 10}, {"num_params": 11}) == {"num_params": "regression"}
    assert statuses({"imbalance": 0.3}, {"imbalance": 0.2}) == {"imbalance": "regression"}
    assert statuses({"imbalance": 0.3}, {"imbalance": 0.34}) == {"imbalance": "ok"}


def test_missing_new_and_untracked_metrics():
    assert statuses({"acc": 0.5, "f1": 0.5}, {"acc": 0.5, "probe_acc_a": 0.7, "wall_seconds": 3}) == {
        "acc": "ok", "f1": "missing", "probe_acc_a": "new"}
    assert statuses({"acc": 0.5}, {"acc": float("nan")}) == {"acc": "missing"}


def test_tolerance_lookup_parsing_and_description():
    assert tolerance_for("probe_f1_audio", DEFAULT_TOLERANCES) == Tolerance(abs=0.05, better="higher",
                                                                             samples=2)
    assert tolerance_for("wall_seconds", DEFAULT_TOLERANCES) is None
    parsed = parse_tolerances({"acc": {"abs": 0.1}, "train_flops": {"rel": 0.01}, "num_params": "exact"})
    assert parsed["acc"] == Tolerance(abs=0.1) and parsed["f1"] == DEFAULT_TOLERANCES["f1"]
    assert parse_tolerances({"acc": {"abs": 0.05, "samples": 2}})["acc"].samples == 2
    assert Tolerance(rel=0.01).allowed(200) == 2.0
    assert Tolerance(abs=0.05, better="higher").describe() == "±0.05 absolute, higher is better"
    assert Tolerance().describe() == "exact"
    with pytest.raises(ValueError, match="unknown key"):
        parse_tolerances({"acc": {"absolute": 0.1}})
    with pytest.raises(ValueError, match="'better' must be"):
        parse_tolerances({"acc": {"abs": 0.1, "better": "up"}})
    with pytest.raises(ValueError, match="'samples' must be a whole number"):
        parse_tolerances({"acc": {"samples": 1.5}})
    with pytest.raises(ValueError, match="'exact' cannot be combined"):
        parse_tolerances({"acc": {"exact": True, "samples": 1}})


def test_delta_message_names_case_metric_both_values_and_tolerance():
    (d,) = compare_metrics("MMPareto-CREMAD", {"acc": 0.8}, {"acc": 0.7}, DEFAULT_TOLERANCES)
    assert d.message("cases/baselines/smoke.json") == (
        "MMPareto-CREMAD: acc regressed: observed 0.7000, baseline 0.8000 (difference -0.1000; "
        "tolerance ±0.05 absolute or 2 test samples' worth (test split size unknown: not "
        "applied), higher is better) [cases/baselines/smoke.json]")
    (d,) = compare_metrics("MMPareto-CREMAD", {"acc": 0.8}, {"acc": 0.6}, DEFAULT_TOLERANCES,
                           test_size={"samples": 12, "classes": 6, "min_class_support": 2})
    assert d.message() == (
        "MMPareto-CREMAD: acc regressed: observed 0.6000, baseline 0.8000 (difference -0.2000; "
        "tolerance ±0.05 absolute or 2 test samples' worth (±0.1667 of 12 samples), higher is "
        "better)")


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_baseline_session_and_record_files_load_into_tables(tmp_path):
    base = baseline_json({"B-D": {"acc": 0.9, "train_flops": 10}}, profile="smoke",
                         tolerances=parse_tolerances({"acc": {"abs": 0.2}}),
                         case_tolerances={"B-D": {"train_flops": Tolerance(rel=0.5)}})
    table = load_table(write(tmp_path, "b.json", base))
    assert table.kind == "baseline" and table.cases == {"B-D": {"acc": 0.9, "train_flops": 10}}
    assert table.tolerances_of("B-D")["train_flops"] == Tolerance(rel=0.5)
    session = {"schema": "bbench.session/1", "cases": [
        {"case": "B-D", "metrics": {"acc": 0.6, "train_flops": 14, "wall_seconds": 1.0}},
        {"case": "S-D", "outcome": "skipped"}]}
    observed = load_table(write(tmp_path, "s.json", session))
    assert observed.cases == {"B-D": {"acc": 0.6, "train_flops": 14}}
    report = compare_tables(table, observed)
    assert [(d.metric, d.status) for d in report.deltas] == [("acc", "regression"), ("train_flops", "ok")]
    run = tmp_path / "run"
    run.mkdir()
    write(run, "record.json", {"schema": "bbench.run/1", "spec": {"method": "B", "dataset": {"name": "D"}},
                               "metrics": {"acc": 0.95, "shapley": {"a": 0.1}}})
    record = load_table(run)
    assert record.kind == "record" and record.cases == {"B-D": {"acc": 0.95}}
    report = compare_tables(table, record)  # the record lacks train_flops: not reported as missing
    assert [(d.metric, d.status) for d in report.deltas] == [("acc", "ok")] and report.ok
    with pytest.raises(ValueError, match="unknown result schema"):
        table_from_json({"schema": "other"}, "x.json")


def test_report_lists_regressions_improvements_added_and_removed():
    a = table_from_json(baseline_json({"A-D": {"acc": 0.9}, "B-D": {"acc": 0.5}, "C-D": {"acc": 0.5}},
                                      profile="smoke"), "A.json")
    b = table_from_json({"schema": "bbench.session/1", "cases": [
        {"case": "A-D", "metrics": {"acc": 0.7}}, {"case": "B-D", "metrics": {"acc": 0.8}},
        {"case": "E-D", "metrics": {"acc": 0.1}}]}, "B.json")
    report = compare_tables(a, b)
    text = format_report(report)
    assert not report.ok and report.added == ["E-D"] and report.removed == ["C-D"]
    assert "2 case(s) compared, 1 regression(s), 1 improvement(s), 1 added, 1 removed" in text
    assert "A-D: acc regressed" in text and "B-D: acc improved" in text
    assert "Cases added (in B, not in A): E-D" in text and "Cases removed (in A, not in B): C-D" in text


def test_tracked_metrics_keep_only_numbers_with_a_tolerance():
    assert tracked_metrics({"acc": 0.5, "shapley": {"a": 1}, "acc_a": 0.4, "train_flops": 3,
                            "probe_acc_x": 0.2, "best_epoch": 3}) == {
        "acc": 0.5, "train_flops": 3, "probe_acc_x": 0.2}
