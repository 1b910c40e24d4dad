"""The loop's speed paths keep every registered method correct (issue: throughput).

For each training method, on its smoke case of the default mfeat pair (the budget and
parameters `cases/cases_grid.py` gives it): the FLOPs counted once per step signature equal
counting every step, and bf16 training stays finite and within 2 points of fp32's accuracy.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import bbench
from bbench.cases.collect import load_declarations
from bbench.cases.profiles import PlanContext, get_profile
from bbench.methods.registry import METHODS

GRID = Path(__file__).resolve().parents[2] / "cases" / "cases_grid.py"
TRAINED = [name for name in METHODS.names() if not METHODS.get(name).procedure]
PROCEDURES = [name for name in METHODS.names() if METHODS.get(name).procedure]


def smoke_plan(method: str, tmp_path: Path):
    """The smoke profile's plan of the method's case on the default mfeat pair."""
    cases = [c for c in load_declarations(GRID).cases
             if c.method == method and c.dataset.token == "mfeat"]
    assert cases, f"{method} has no smoke case on mfeat"
    return get_profile("smoke").plan(cases[0], PlanContext(workdir=tmp_path / "work"))


def run_plan(plan, out: Path, **overrides):
    return bbench.run(plan.method, plan.dataset, output_root=str(out),
                      **{**plan.kwargs(), **overrides})


def test_the_lists_cover_every_registered_method():
    assert set(TRAINED) | set(PROCEDURES) == set(METHODS.names())
    assert len(TRAINED) >= 19  # a procedure (LinearProbe) trains probes, not the loop's model


@pytest.mark.slow
@pytest.mark.parametrize("method", TRAINED)
def test_flops_counted_once_per_step_signature_equal_counting_every_step(method, tmp_path):
    plan = smoke_plan(method, tmp_path)
    signature = run_plan(plan, tmp_path / "sig", **{"train.flops": "signature"}).metrics
    every = run_plan(plan, tmp_path / "all", **{"train.flops": "all"}).metrics
    assert every["train_flops_reused"] == 0
    assert signature["train_flops_reused"] > 0  # the cache was used, not bypassed
    assert signature["train_flops"] == every["train_flops"]
    assert signature["train_flops_by_region"] == every["train_flops_by_region"]


@pytest.mark.slow
@pytest.mark.parametrize("method", TRAINED)
def test_bf16_training_is_finite_and_within_two_points_of_fp32(method, tmp_path):
    plan = smoke_plan(method, tmp_path)
    fp32 = run_plan(plan, tmp_path / "fp32", **{"train.flops": "off"})
    bf16 = run_plan(plan, tmp_path / "bf16", **{"train.flops": "off", "train.precision": "bf16"})
    assert bf16.environment["fast_path"]["precision"] == "bf16"
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
               for h in bf16.history)
    assert abs(bf16.metrics["acc"] - fp32.metrics["acc"]) <= 0.02 + 1e-9
