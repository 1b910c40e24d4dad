"""Missing-modality robustness: the recorded v(S) and the robustness rows built from them.

The recorded subset accuracies come from the Shapley counts (no extra pass); here they are
checked against a brute-force evaluation that zeroes the absent modalities' inputs in the
batch and runs the method's ordinary evaluation, on every Shapley path (one-pass linear,
one-pass stacked, masked passes) and for M = 2 and M = 3.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings, strategies as st

import bbench
from bbench.config.resolve import resolve_spec
from bbench.data.base import move_batch
from bbench.data.registry import build_datamodule
from bbench.engine.evaluate import eval_loader
from bbench.engine.selected import load_selected_model
from bbench.methods.reconboost import ReconBoost
from bbench.metrics.shapley import choose_path, subset_members, subset_name
from bbench.models.modes import eval_mode
from bbench.report.robustness import (
    EMPTY_SUBSET, Column, missing_columns, record_robustness, robustness_rows, subset_accuracies,
    unavailable_reason)
from bbench.results.record import RunResult

TINY = {"dataset.options": {"subsample_per_class": 20}, "epochs": 2, "progress": False}
THREE = "fac,fou,mor"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunResult]:
    """Tiny mfeat runs, one per Shapley path and modality count, plus the two without v(S)."""
    root = str(tmp_path_factory.mktemp("robustness"))
    go = lambda method, **kw: bbench.run(method, "mfeat", output_root=root, **TINY, **kw)  # noqa: E731
    return {
        "linear-2": go("Baseline"),
        "linear-3": go("Baseline", modalities=THREE),
        "stacked-3": go("Baseline", modalities=THREE, fusion="film"),
        "masked-3": go("MLA", modalities=THREE, start=0),
        "reconboost": go("ReconBoost", stage_epochs=1, correct_epochs=0, start=0),
        "no-shapley": go("Baseline", **{"eval.shapley": False}),
    }


@torch.no_grad()
def brute_force_subset_accuracy(record: RunResult) -> tuple[dict[str, float], str]:
    """v(S) by evaluating the selected model once per subset with the absent modalities'
    raw inputs zeroed in the batch (input masking, by hand), and the path Shapley took."""
    spec = resolve_spec(base=record.spec)
    data = build_datamodule(spec.dataset)
    selected = load_selected_model(record, data.info, torch.device("cpu"))
    method, model = selected.method, selected.model
    names = method.eval_modalities(model)
    accuracies = {}
    with eval_mode(model):
        for s in range(1 << len(names)):
            present = subset_members(s, len(names))
            correct = total = 0
            for batch in eval_loader(data.test, 64, data.collate):
                batch = move_batch(batch, torch.device("cpu"))
                for m, name in enumerate(names):
                    if m not in present:
                        batch[name] = torch.zeros_like(batch[name])
                logits, _ = method.eval_logits(model, batch, unimodal=False)
                correct += int((logits.argmax(1) == batch["label"]).sum())
                total += int(batch["label"].numel())
            accuracies[subset_name(s, names)] = correct / total
    return accuracies, choose_path(method, model)


@pytest.mark.parametrize("name,path", [("linear-2", "one-pass-linear"), ("linear-3", "one-pass-linear"),
                                       ("stacked-3", "one-pass-stacked"), ("masked-3", "masked-passes")])
def test_recorded_subset_accuracies_equal_a_brute_force_masked_evaluation(runs, name, path):
    record = runs[name]
    expected, took = brute_force_subset_accuracy(record)
    assert took == path  # each Shapley path is covered once
    assert record.metrics["subset_acc"] == expected
    assert len(expected) == 1 << len(record.metrics["shapley"])


@pytest.mark.parametrize("name", ["linear-2", "linear-3", "stacked-3", "masked-3"])
def test_full_set_entry_is_the_record_accuracy_and_the_empty_set_is_recorded(runs, name):
    record = runs[name]
    full = "+".join(record.metrics["shapley"])
    assert record.metrics["subset_acc"][full] == record.metrics["acc"]
    assert EMPTY_SUBSET in record.metrics["subset_acc"]
    # the recorded v(S) are the ones the Shapley values were computed from
    assert record.metrics["subset_acc"] == record.extra["shapley"]["subset_accuracy"]


def test_a_method_with_undefined_imbalance_records_nothing_and_the_reason(runs):
    record = runs["reconboost"]
    assert "subset_acc" not in record.metrics
    assert subset_accuracies(record) is None and record_robustness(record) is None
    assert unavailable_reason(record) == ReconBoost.imbalance_undefined
    [row] = robustness_rows([record], group=lambda r: r.method)
    assert row.unavailable == ReconBoost.imbalance_undefined and row.values == {} and row.n == 0


def test_a_run_without_shapley_evaluation_says_so(runs):
    record = runs["no-shapley"]
    assert "subset_acc" not in record.metrics
    assert "eval.shapley" in unavailable_reason(record)


def test_rows_of_real_records_read_each_modality_missing_and_every_subset_for_three(runs):
    two, three = runs["linear-2"], runs["linear-3"]
    by_two, by_three = record_robustness(two), record_robustness(three)
    v2, v3 = two.metrics["subset_acc"], three.metrics["subset_acc"]
    assert by_two == {"fac+mor": two.metrics["acc"], "mor": v2["mor"], "fac": v2["fac"]}
    assert list(by_three) == ["fac+fou+mor", "fou+mor", "fac+mor", "fac+fou", "mor", "fou", "fac"]
    assert by_three == {k: v3[k] for k in by_three}


# -- columns --------------------------------------------------------------------------------------

def test_columns_for_two_and_three_modalities():
    assert [(c.label, c.key) for c in missing_columns(("a", "b"))] == [
        ("all present", "a+b"), ("without a", "b"), ("without b", "a")]
    three = missing_columns(("a", "b", "c"))
    assert [c.label for c in three] == ["all present", "without a", "without b", "without c",
                                        "without a+b", "without a+c", "without b+c"]
    assert [c.key for c in three] == ["a+b+c", "b+c", "a+c", "a+b", "c", "b", "a"]
    assert [c.label for c in missing_columns(("a",))] == ["all present"]


@given(st.integers(1, 6))
@settings(max_examples=6, deadline=None)
def test_columns_cover_every_proper_missing_subset_once_in_order(M):
    names = tuple(f"m{i}" for i in range(M))
    columns = missing_columns(names)
    missing = [frozenset(c.missing) for c in columns]
    assert len(columns) == (1 << M) - 1 and len(set(missing)) == len(missing)
    assert frozenset(names) not in missing  # every modality missing is not a column
    assert [len(m) for m in missing] == sorted(len(m) for m in missing)
    for c in columns:
        assert set(c.missing) | set(c.present) == set(names) and not set(c.missing) & set(c.present)
        bits = sum(1 << names.index(n) for n in c.present)
        assert c.key == subset_name(bits, names)


# -- rows from synthetic records ----------------------------------------------------------------

def synthetic(method: str, seed: int, subset_acc: dict[str, float] | None, *,
              modalities: tuple[str, ...] = ("a", "b"), extra: dict[str, Any] | None = None,
              metrics: dict[str, Any] | None = None) -> RunResult:
    spec = {"method": method, "method_params": {},
            "dataset": {"name": "toy", "modalities": list(modalities)},
            "train": {"seed": seed}, "eval": {"shapley": True, "mask": "input"}}
    full = "+".join(modalities)
    m = {"acc": (subset_acc or {}).get(full, 0.5), **(metrics or {})}
    if subset_acc is not None:
        m["subset_acc"] = subset_acc
    return RunResult(Path(f"/nonexistent/{method}-{seed}"), spec, m, extra=extra or {})


def two_modality_values(draw_floats):
    return {"∅": draw_floats[0], "a": draw_floats[1], "b": draw_floats[2], "a+b": draw_floats[3]}


@given(st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=1, max_size=5))
@settings(max_examples=25, deadline=None)
def test_a_group_holds_each_records_value_per_column_and_their_mean(draws):
    records = [synthetic("Baseline", seed, two_modality_values(d)) for seed, d in enumerate(draws)]
    [row] = robustness_rows(records, group=lambda r: r.method)
    assert row.n == len(draws) and row.label == "Baseline" and row.mask == "input"
    assert row.values == {"a+b": [d[3] for d in draws], "b": [d[2] for d in draws],
                          "a": [d[1] for d in draws]}
    without_a = row.columns[1]
    assert without_a == Column(("a",), ("b",))
    assert row.mean(without_a) == pytest.approx(sum(d[2] for d in draws) / len(draws))
    assert row.mean("b") == row.mean(without_a)


def test_rows_follow_the_grouping_in_first_appearance_order_and_skip_procedures():
    values = {"∅": 0.1, "a": 0.6, "b": 0.4, "a+b": 0.8}
    records = [synthetic("OGM", 0, values), synthetic("Baseline", 0, values),
               synthetic("OGM", 1, values),
               synthetic("LinearProbe", 0, None, metrics={"probe_acc_a": 0.5})]
    records[-1].metrics.pop("acc")
    rows = robustness_rows(records, group=lambda r: r.method)
    assert [(r.label, r.n) for r in rows] == [("OGM", 2), ("Baseline", 1)]
    per_record = robustness_rows(records, group=lambda r: (r.method, r.spec["train"]["seed"]))
    assert [r.key for r in per_record] == [("OGM", 0), ("Baseline", 0), ("OGM", 1)]


def test_records_from_before_subset_acc_are_read_from_their_shapley_block():
    values = {"∅": 0.1, "a": 0.6, "b": 0.4, "a+b": 0.8}
    old = synthetic("Baseline", 0, None, extra={"shapley": {"subset_accuracy": values}})
    assert subset_accuracies(old) == values
    assert record_robustness(old) == {"a+b": 0.8, "b": 0.4, "a": 0.6}


def test_a_group_mixing_modality_sets_is_refused_with_the_record_named():
    two = synthetic("Baseline", 0, {"∅": 0.1, "a": 0.6, "b": 0.4, "a+b": 0.8})
    three_values = {subset_name(s, ("a", "b", "c")): 0.5 for s in range(8)}
    three = synthetic("Baseline", 1, three_values, modalities=("a", "b", "c"))
    with pytest.raises(ValueError, match="Baseline-1"):
        robustness_rows([two, three], group=lambda r: r.method)
