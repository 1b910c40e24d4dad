"""Sample-aware tolerances (bbench.report.compare): one test sample's worth per metric, its
bounds checked by brute force against bbench's own metric code, and the file format."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bbench.metrics.classification import accuracy, evaluation_size, macro_f1
from bbench.metrics.shapley import imbalance_degree, shapley_from_values
from bbench.report.compare import (
    DEFAULT_TOLERANCES, SampleWorth, Tolerance, baseline_json, compare_metrics, compare_tables,
    load_table, parse_tolerances, sample_worth, table_from_json)

CREMAD = {"samples": 12, "classes": 6, "min_class_support": 2}


def test_worth_of_one_sample_per_metric():
    assert sample_worth("acc", CREMAD) == SampleWorth(1 / 12, "of 12 samples")
    assert sample_worth("probe_acc_audio", CREMAD).value == 1 / 12
    assert sample_worth("imbalance", CREMAD).value == 1 / 12
    assert sample_worth("f1", CREMAD).value == 3 / (6 * 2)
    assert sample_worth("probe_f1_visual", CREMAD).value == 0.25
    assert sample_worth("train_flops", CREMAD) is None  # counts have no sample worth
    assert sample_worth("acc", None) is None and sample_worth("acc", {}) is None
    assert sample_worth("f1", {"samples": 12}) is None  # F1 needs the classes and their support
    assert sample_worth("acc", {"samples": 0, "classes": 2, "min_class_support": 0}) is None


def statuses(baseline, observed, **sizes):
    return {d.metric: d.status for d in compare_metrics("B-D", baseline, observed, DEFAULT_TOLERANCES,
                                                        **sizes)}


def test_two_samples_pass_and_three_fail_on_a_twelve_sample_split():
    assert statuses({"imbalance": 0.0}, {"imbalance": 2 / 12}, test_size=CREMAD) == {"imbalance": "ok"}
    assert statuses({"imbalance": 0.0}, {"imbalance": 3 / 12}, test_size=CREMAD) == {
        "imbalance": "regression"}
    assert statuses({"acc": 0.5}, {"acc": 0.5 - 2 / 12}, test_size=CREMAD) == {"acc": "ok"}
    assert statuses({"acc": 0.5}, {"acc": 0.5 - 3 / 12}, test_size=CREMAD) == {"acc": "regression"}
    assert statuses({"acc": 0.5}, {"acc": 0.5 + 3 / 12}, test_size=CREMAD) == {"acc": "improvement"}
    assert statuses({"f1": 0.6}, {"f1": 0.1}, test_size=CREMAD) == {"f1": "ok"}  # 2 × 3/(6·2)
    assert statuses({"f1": 0.6}, {"f1": 0.09}, test_size=CREMAD) == {"f1": "regression"}
    # without a known split, samples adds nothing: the ±0.05 alone
    assert statuses({"imbalance": 0.0}, {"imbalance": 1 / 12}) == {"imbalance": "regression"}
    # on a large split one sample is below ±0.05, which then applies
    big = {"samples": 300, "classes": 10, "min_class_support": 30}
    assert statuses({"acc": 0.9}, {"acc": 0.86}, test_size=big) == {"acc": "ok"}
    assert statuses({"acc": 0.9}, {"acc": 0.84}, test_size=big) == {"acc": "regression"}


def test_worth_comes_from_the_baselines_split_else_the_observed_one():
    small, large = CREMAD, {"samples": 100, "classes": 6, "min_class_support": 10}
    assert statuses({"acc": 0.5}, {"acc": 0.42}, test_size=small, observed_test_size=large) == {"acc": "ok"}
    assert statuses({"acc": 0.5}, {"acc": 0.42}, test_size=large, observed_test_size=small) == {
        "acc": "regression"}
    assert statuses({"acc": 0.5}, {"acc": 0.42}, observed_test_size=small) == {"acc": "ok"}


def test_describe_and_delta_message_say_the_sample_allowance():
    tol = DEFAULT_TOLERANCES["imbalance"]
    worth = sample_worth("imbalance", CREMAD)
    assert tol.describe(worth) == "±0.05 absolute or 2 test samples' worth (±0.1667 of 12 samples)"
    assert tol.describe() == "±0.05 absolute or 2 test samples' worth (test split size unknown: not applied)"
    assert Tolerance(abs=0.05, samples=1).describe(worth) == (
        "±0.05 absolute or 1 test sample's worth (±0.0833 of 12 samples)")
    assert Tolerance(samples=2, better="higher").describe(worth) == (
        "2 test samples' worth (±0.1667 of 12 samples), higher is better")
    assert DEFAULT_TOLERANCES["f1"].describe(sample_worth("f1", CREMAD)) == (
        "±0.05 absolute or 2 test samples' worth (±0.5000 of 12 samples: 3/(C·s), 6 classes, "
        "smallest class 2), higher is better")
    (d,) = compare_metrics("Baseline-CREMAD", {"imbalance": 0.0}, {"imbalance": 3 / 12},
                           DEFAULT_TOLERANCES, test_size=CREMAD)
    assert d.message() == ("Baseline-CREMAD: imbalance changed: observed 0.2500, baseline 0.0000 "
                           "(difference +0.2500; tolerance ±0.05 absolute or 2 test samples' worth "
                           "(±0.1667 of 12 samples))")
    assert d.allowed == pytest.approx(2 / 12)
    assert type(d).from_json(json.loads(json.dumps(d.to_json()))) == d


def test_tolerance_json_round_trip_and_old_files():
    for tol in [*DEFAULT_TOLERANCES.values(), Tolerance(rel=0.01, samples=3, better="lower"),
                Tolerance(samples=1)]:
        back = Tolerance.from_json(json.loads(json.dumps(tol.to_json())))
        assert back == tol and back.why == tol.why
    assert Tolerance(abs=0.05, samples=1).to_json() == {"abs": 0.05, "samples": 1}
    assert Tolerance(samples=1).exact is False and Tolerance().to_json() == {"exact": True}
    # a file written before `samples` existed: the same tolerance as before (no sample term)
    assert Tolerance.from_json({"abs": 0.05, "better": "higher"}) == Tolerance(abs=0.05, better="higher")
    assert parse_tolerances({"acc": {"abs": 0.05}})["acc"].samples == 0
    with pytest.raises(ValueError, match="'samples' must be a whole number"):
        Tolerance.from_json({"samples": True})
    with pytest.raises(ValueError, match="'abs' must be a number"):
        Tolerance.from_json({"abs": "0.05"})


def test_baseline_files_store_test_size_beside_the_metrics(tmp_path):
    doc = baseline_json({"B-D": {"imbalance": 0.0}, "U-D": {"acc": 0.5}}, profile="smoke",
                        test_sizes={"B-D": CREMAD})
    assert doc["cases"]["B-D"] == {"metrics": {"imbalance": 0.0}, "test_size": CREMAD}
    assert "test_size" not in doc["cases"]["U-D"]
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(doc))
    table = load_table(path)
    assert table.test_sizes == {"B-D": CREMAD}
    session = table_from_json({"schema": "bbench.session/1", "cases": [
        {"case": "B-D", "metrics": {"imbalance": 1 / 12, "test_size": CREMAD}}]}, "s.json")
    assert session.cases == {"B-D": {"imbalance": 1 / 12}} and session.test_sizes == {"B-D": CREMAD}
    assert compare_tables(table, session).ok
    # an old baseline without test_size: the observed session's split is used
    old = table_from_json({"schema": "bbench.baselines/1", "cases": {"B-D": {"metrics": {"imbalance": 0.0}}}})
    assert old.test_sizes == {} and compare_tables(old, session).ok
    old.cases["B-D"]["imbalance"] = -2 / 12  # three samples away
    assert not compare_tables(old, session).ok


# --- the bounds, by brute force against bbench's own metric code -----------------------------

@st.composite
def labelled_predictions(draw):
    classes = draw(st.integers(2, 5))
    n = draw(st.integers(1, 14))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    preds = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    return classes, torch.tensor(labels), torch.tensor(preds)


@settings(max_examples=150, deadline=None)
@given(labelled_predictions())
def test_one_changed_prediction_moves_accuracy_by_at_most_1_over_n_and_f1_by_3_over_cs(data):
    classes, labels, preds = data
    size = evaluation_size(labels, classes)
    acc_worth, f1_worth = sample_worth("acc", size).value, sample_worth("f1", size).value
    acc0, f10 = accuracy(preds, labels), macro_f1(preds, labels, classes)
    for i in range(len(labels)):
        for c in range(classes):
            if c == preds[i]:
                continue
            changed = preds.clone()
            changed[i] = c
            assert abs(accuracy(changed, labels) - acc0) <= acc_worth + 1e-12
            assert abs(macro_f1(changed, labels, classes) - f10) <= f1_worth + 1e-12


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 3).flatmap(lambda m: st.tuples(
    st.just(m), st.integers(1, 8).flatmap(lambda n: st.tuples(
        st.just(n), st.lists(st.lists(st.booleans(), min_size=1 << m, max_size=1 << m),
                             min_size=n, max_size=n))))))
def test_one_flipped_subset_prediction_moves_imbalance_by_at_most_1_over_n(data):
    m, (n, correct) = data  # correct[sample][subset]: is the fused prediction with only S right

    def imbalance(table):
        values = [sum(row[s] for row in table) / n for s in range(1 << m)]  # v(S) = accuracy
        return imbalance_degree(shapley_from_values(values, m))

    worth = sample_worth("imbalance", {"samples": n, "classes": 2, "min_class_support": 1}).value
    before = imbalance(correct)
    for i in range(n):
        for s in range(1 << m):
            flipped = [list(row) for row in correct]
            flipped[i][s] = not flipped[i][s]
            assert abs(imbalance(flipped) - before) <= worth + 1e-12
