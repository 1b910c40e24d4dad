"""AGM (methods.md §7.2): Shapley logits, scores, ratios, coefficients, running means, the
training step inside and outside the window, clipping, state and an end-to-end run."""
import copy
import json
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import bbench
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.trainer import Trainer
from bbench.methods.agm import (
    AGM, SCORE_CAP, agm_coefficients, agm_scores, shapley_logits, update_running_mean)
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.metrics.shapley import choose_path, shapley_from_values, subset_logits
from bbench.testing.resume import interrupted_and_resumed
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info

INFO2 = toy_info(dims=(64, 9), num_classes=4)
INFO3 = toy_info(dims=(16, 9, 5), num_classes=4, names=("a", "b", "c"))
CASES = {2: (INFO2, toy_batch(INFO2, n=32)), 3: (INFO3, toy_batch(INFO3, n=32))}
BOTH = pytest.mark.parametrize("M", [2, 3])
F64 = torch.float64
ALL_OFF = {"clip": 0.0}


def random_table(M: int, B: int, K: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1 << M, B, K, generator=g, dtype=F64) * 3


def step(params, info, batch, epoch=0, path=None, trainer=None, init_seed=0):
    """`one_step` with the subset-logit path chosen; `trainer` continues an existing run."""
    if trainer is None:
        method = build_method("AGM", params, RunContext(info, ModelSpec(), 0, torch.device("cpu")))
        method.logits_path = path
        torch.manual_seed(init_seed)
        model = method.build_model()
        split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
        spec = TrainSpec(optimizer=OptimizerSpec(lr=0.1), epochs=1, progress=False)
        trainer = Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False)
    method = trainer.method
    method.train_step(trainer, batch, StepInfo(epoch, 0, 1, 0, active=method.active(epoch)))
    return trainer


def ew_names(model):
    return {f"encoders.{m}.{n}" for m in model.modalities
            for n, p in model.encoders[m].named_parameters() if p.ndim >= 2}


# -- Shapley logits ------------------------------------------------------------------------

@given(st.integers(2, 4), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31))
@settings(max_examples=60)
def test_efficiency_sum_of_phi_is_the_full_prediction(M, B, K, seed):
    logits = random_table(M, B, K, seed)  # subset 0 is nonzero here: f(∅) := 0 must ignore it
    phi = shapley_logits(logits)
    assert phi.shape == (M, B, K)
    torch.testing.assert_close(phi.sum(0), logits[-1], rtol=0, atol=1e-9)


@given(st.integers(2, 4).flatmap(lambda M: st.tuples(
    st.just(M), st.lists(st.floats(-5, 5), min_size=1 << M, max_size=1 << M))))
def test_phi_is_the_shapley_value_with_an_empty_coalition_worth_zero(case):
    M, values = case
    phi = shapley_logits(torch.tensor(values, dtype=F64).view(-1, 1, 1))
    expected = shapley_from_values([0.0] + values[1:], M)
    assert phi.flatten().tolist() == pytest.approx(expected, abs=1e-12)


def test_closed_forms_keep_the_singleton_terms():
    f = random_table(2, 3, 4, seed=1)  # bit 0 = a, bit 1 = v
    phi = shapley_logits(f)
    torch.testing.assert_close(phi[0], 0.5 * (f[3] - f[2] + f[1]))
    torch.testing.assert_close(phi[1], 0.5 * (f[3] - f[1] + f[2]))
    # the three-modality form of the authors' code (A = bit 0, V = bit 1, T = bit 2)
    f = random_table(3, 3, 4, seed=2)
    A, V, AV, T, AT, VT, AVT = (f[s] for s in range(1, 8))
    phi = shapley_logits(f)
    torch.testing.assert_close(phi[0], (AVT - VT) / 3 + (AV - V + AT - T) / 6 + A / 3)
    torch.testing.assert_close(phi[1], (AVT - AT) / 3 + (AV - A + VT - T) / 6 + V / 3)
    torch.testing.assert_close(phi[2], (AVT - AV) / 3 + (VT - V + AT - A) / 6 + T / 3)


def test_a_table_that_is_not_one_per_subset_is_refused():
    with pytest.raises(ValueError, match="2\\^M"):
        shapley_logits(torch.zeros(3, 2, 2))


# -- scores, ratios, coefficients, running means -------------------------------------------

def test_scores_are_the_capped_negative_log_likelihood_of_phi():
    phi = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[0.0, 500.0], [0.0, 0.0]]], dtype=F64)
    labels = torch.tensor([0, 0])
    s = agm_scores(phi, labels)
    assert s[0] == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2)
    assert s[1] == pytest.approx((SCORE_CAP + math.log(2)) / 2)  # 500 nats, capped, finite
    assert SCORE_CAP == 18.4207


def test_reference_values():
    k, r, r_hat = agm_coefficients(torch.tensor([0.5, 1.0], dtype=F64), torch.zeros(2, dtype=F64),
                                   0.1, 7)
    assert r.tolist() == pytest.approx([1.648721, 0.606531], abs=1e-6)
    assert r_hat.tolist() == [1.0, 1.0]  # T = 0 at the first step
    assert k.tolist() == pytest.approx([0.937187, 1.040131], abs=1e-6)
    # r̂ = 1, r = e: the lower-loss modality by one nat, at T = 0
    k, r, _ = agm_coefficients(torch.tensor([0.0, 1.0], dtype=F64), torch.zeros(2, dtype=F64),
                               0.1, 7)
    assert float(r[0]) == pytest.approx(math.e)
    assert float(k[0]) == pytest.approx(0.842124, abs=1e-6)
    # M = 3: the factor is M/(M−1) = 3/2, s̄ = 13/15
    s = torch.tensor([0.2, 1.5, 0.9], dtype=F64)
    k, r, _ = agm_coefficients(s, torch.zeros(3, dtype=F64), 0.1, 7)
    assert r.tolist() == pytest.approx([math.e, math.exp(-0.95), math.exp(-0.05)], rel=1e-12)
    assert k.tolist() == pytest.approx([math.exp(0.1 * (1 - x)) for x in r.tolist()], rel=1e-12)


def test_the_lower_loss_modality_is_slowed_not_the_other_way_round():
    """Pitfall: exp(M/(M−1)(s − s̄)) for r and r̂ inverts which modality is slowed."""
    for scores in ([0.5, 1.0], [0.2, 1.5, 0.9]):
        s = torch.tensor(scores, dtype=F64)
        k, r, _ = agm_coefficients(s, torch.zeros_like(s), 0.1, 7)
        assert int(r.argmax()) == int(s.argmin()) and int(k.argmin()) == int(s.argmin())
        assert float(k[s.argmin()]) < 1 < float(k[s.argmax()])


scores_m = st.integers(2, 3).flatmap(lambda M: st.tuples(
    st.lists(st.floats(0, SCORE_CAP), min_size=M, max_size=M),
    st.lists(st.floats(0, SCORE_CAP), min_size=M, max_size=M)))


@given(st.lists(st.floats(0, SCORE_CAP), min_size=2, max_size=3), st.floats(0, 2),
       st.floats(0.1, 10))
def test_scores_at_their_running_means_modulate_nothing(s, alpha, cap):
    s = torch.tensor(s, dtype=F64)
    k, r, r_hat = agm_coefficients(s, s.clone(), alpha, cap)
    assert torch.equal(r, r_hat) and torch.equal(k, torch.ones_like(k))


@given(scores_m, st.floats(0, 2), st.floats(0.1, 10))
def test_coefficients_are_bounded_by_exp_alpha_cap(case, alpha, cap):
    s, t = (torch.tensor(v, dtype=F64) for v in case)
    k, _, _ = agm_coefficients(s, t, alpha, cap)
    assert bool((k <= math.exp(alpha * cap) * (1 + 1e-12)).all()) and bool((k >= 0).all())


@given(scores_m, st.floats(0.01, 2))
def test_the_modality_above_its_long_run_ratio_gets_k_below_one(case, alpha):
    s, t = (torch.tensor(v, dtype=F64) for v in case)
    k, r, r_hat = agm_coefficients(s, t, alpha, 7)
    for m in range(len(s)):
        assume(abs(float(r[m] - r_hat[m])) > 1e-6)
        assert (float(k[m]) < 1) == (float(r[m]) > float(r_hat[m]))


@given(st.integers(2, 3).flatmap(lambda M: st.lists(
    st.lists(st.floats(0, SCORE_CAP), min_size=M, max_size=M), min_size=1, max_size=30)))
def test_running_means_are_the_arithmetic_means_of_the_scores(history):
    target, count = torch.zeros(len(history[0]), dtype=F64), 0
    for s in history:
        target, count = update_running_mean(target, count, torch.tensor(s, dtype=F64))
    assert count == len(history)
    assert target.tolist() == pytest.approx(torch.tensor(history, dtype=F64).mean(0).tolist(),
                                            abs=1e-9)


# -- the training step -----------------------------------------------------------------------

@BOTH
def test_zero_alpha_without_clipping_gives_baseline_gradients(M):
    info, batch = CASES[M]
    base, _ = one_step("Baseline", {}, info, batch)
    agm, _ = one_step("AGM", {"alpha": 0.0, **ALL_OFF}, info, batch)
    logged = agm.method.log.flush()
    assert all(logged[f"coef_{m}"] == 1.0 for m in info.modalities)
    for (name, a), (_, b) in zip(grads_of(base.model).items(), grads_of(agm.model).items()):
        assert torch.equal(a, b), name
    assert agm.model.training  # the eval-mode subset pass restored the training mode


@BOTH
def test_only_encoder_weight_tensors_are_scaled_each_by_its_coefficient(M):
    info, batch = CASES[M]
    base, _ = one_step("Baseline", {}, info, batch)
    agm, _ = one_step("AGM", {"alpha": 1.0, **ALL_OFF}, info, batch)
    logged = agm.method.log.flush()
    gb, ga = grads_of(base.model), grads_of(agm.model)
    weights = ew_names(agm.model)
    for name in gb:
        if name in weights:
            m = name.split(".")[1]
            torch.testing.assert_close(ga[name], gb[name] * logged[f"coef_{m}"])
        else:  # the head and every 1-D parameter
            assert torch.equal(ga[name], gb[name]), name
    assert all(logged[f"coef_{m}"] != 1.0 for m in info.modalities)


@BOTH
def test_the_first_step_coefficients_follow_from_the_logged_scores(M):
    info, batch = CASES[M]
    agm, _ = one_step("AGM", {"alpha": 0.5}, info, batch)
    logged = agm.method.log.flush()
    s = torch.tensor([logged[f"score_{m}"] for m in info.modalities], dtype=F64)
    k, r, r_hat = agm_coefficients(s, torch.zeros_like(s), 0.5, 7)
    for i, m in enumerate(info.modalities):
        assert logged[f"ratio_hat_{m}"] == 1.0
        assert logged[f"ratio_{m}"] == pytest.approx(float(r[i]), rel=1e-5)
        assert logged[f"coef_{m}"] == pytest.approx(float(k[i]), rel=1e-5)
        assert float(agm.method.target[i]) == pytest.approx(float(s[i]), rel=1e-6)
    assert agm.method.count == 1


@BOTH
def test_one_pass_and_masked_pass_logits_give_the_same_coefficients(M):
    info, batch = CASES[M]
    fast = step({"alpha": 1.0, **ALL_OFF}, info, batch)
    slow = step({"alpha": 1.0, **ALL_OFF}, info, batch, path="masked-passes")
    assert choose_path(fast.method, fast.model) != "masked-passes"  # a real one-pass path
    a, b = fast.method.log.flush(), slow.method.log.flush()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for (name, x), (_, y) in zip(grads_of(fast.model).items(), grads_of(slow.model).items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7, msg=name)
    # and the tables themselves, on the trained-one-step model
    method, model = fast.method, fast.model
    one = subset_logits(method, model, batch)
    masked = subset_logits(method, model, batch, path="masked-passes")
    torch.testing.assert_close(one, masked, rtol=1e-5, atol=1e-5)
    s = [agm_scores(shapley_logits(t), batch["label"]) for t in (one, masked)]
    k = [agm_coefficients(x, torch.zeros_like(x), 1.0, 7)[0] for x in s]
    torch.testing.assert_close(k[0], k[1], rtol=1e-5, atol=1e-6)


@BOTH
def test_before_the_window_the_running_means_update_but_the_step_is_baseline(M):
    info, batch = CASES[M]
    base, _ = one_step("Baseline", {}, info, batch)
    agm, _ = one_step("AGM", {"alpha": 1.0, "start": 2, "clip": 1e-4}, info, batch, epoch=0)
    for (name, a), (_, b) in zip(grads_of(base.model).items(), grads_of(agm.model).items()):
        assert torch.equal(a, b), name
    logged = agm.method.log.flush()
    assert agm.method.count == 1
    for i, m in enumerate(info.modalities):
        assert float(agm.method.target[i]) == pytest.approx(logged[f"score_{m}"], rel=1e-6)
        assert float(agm.method.target[i]) > 0
    assert not any(k.startswith("coef_") for k in logged) and "clipped" not in logged


def test_after_the_window_nothing_is_computed_or_updated():
    info, batch = CASES[2]
    base, _ = one_step("Baseline", {}, info, batch)
    agm, _ = one_step("AGM", {"alpha": 1.0, "end": 1}, info, batch, epoch=2)
    for (name, a), (_, b) in zip(grads_of(base.model).items(), grads_of(agm.model).items()):
        assert torch.equal(a, b), name
    assert agm.method.count == 0 and agm.method.log.flush() == {}


@pytest.mark.parametrize("keys", [{"start": 1, "end": 2},
                                  {"modulation_starts": 1, "modulation_ends": 2}])
def test_the_window_is_honoured(keys):
    """Pitfall: window keys read but ignored."""
    info, batch = CASES[2]
    base, _ = one_step("Baseline", {}, info, batch)
    gb = grads_of(base.model)
    for epoch, modulated in ((0, False), (1, True), (2, True), (3, False)):
        agm, _ = one_step("AGM", {"alpha": 1.0, **keys}, info, batch, epoch=epoch)
        assert agm.method.active(epoch) == modulated
        ga = grads_of(agm.model)
        same = all(torch.equal(gb[n], ga[n]) for n in gb)
        assert same != modulated, epoch


def test_running_means_and_ratio_hats_across_steps():
    """r̂ uses T before the step's update; T is the mean of every step's score, e <= end."""
    info, _ = CASES[3]
    batches = [toy_batch(info, n=16, seed=s) for s in range(5)]
    trainer, history, targets = None, [], []
    for j, (epoch, batch) in enumerate(zip((0, 0, 1, 1, 1), batches)):
        trainer = step({"alpha": 0.3, "start": 1}, info, batch, epoch=epoch, trainer=trainer)
        logged = trainer.method.log.flush()
        s = torch.tensor([logged[f"score_{m}"] for m in info.modalities], dtype=F64)
        if targets:
            _, _, r_hat = agm_coefficients(s, targets[-1], 0.3, 7)
            for i, m in enumerate(info.modalities):
                assert logged[f"ratio_hat_{m}"] == pytest.approx(float(r_hat[i]), rel=1e-5)
        history.append(s)
        targets.append(trainer.method.target.double().clone())
        assert ("coef_a" in logged) == (epoch >= 1)
    assert trainer.method.count == 5
    torch.testing.assert_close(targets[-1], torch.stack(history).mean(0), rtol=1e-6, atol=1e-6)


def test_clipping_uses_the_head_elements_and_clips_the_global_norm():
    info, batch = CASES[2]
    free = step({"alpha": 0.5, **ALL_OFF}, info, batch)
    free_grads = grads_of(free.model)
    head = float(free.model.head.fc.weight.grad.abs().max())
    norm = float(torch.nn.utils.get_total_norm(list(free_grads.values())))
    assert head < norm

    tiny = step({"alpha": 0.5, "clip": head / 2}, info, batch)
    expected = [torch.nn.Parameter(torch.zeros_like(g)) for g in free_grads.values()]
    for p, g in zip(expected, free_grads.values()):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(expected, head / 2)  # what the original does: the torch call
    for (name, got), want in zip(grads_of(tiny.model).items(), expected):
        torch.testing.assert_close(got, want.grad, msg=name)
    assert float(torch.nn.utils.get_total_norm(list(grads_of(tiny.model).values()))) == \
        pytest.approx(head / 2, rel=1e-4)
    assert tiny.method.log.flush()["clipped"] == 1.0

    # a threshold above every head element but below the global norm: no clipping
    between = step({"alpha": 0.5, "clip": (head + norm) / 2}, info, batch)
    for (name, got), want in zip(grads_of(between.model).items(), free_grads.values()):
        assert torch.equal(got, want), name
    assert between.method.log.flush()["clipped"] == 0.0


def test_hyper_parameters_defaults_ranges_aliases_and_facts():
    ctx = RunContext(INFO2, ModelSpec(), 0, torch.device("cpu"))
    p = build_method("AGM", {}, ctx).params
    assert (p.alpha, p.cap, p.clip, p.start, p.end) == (0.1, 7.0, 5.0, 0, 80)
    assert build_method("AGM", {"grad_norm_clip": 1.0}, ctx).params.clip == 1.0
    for bad in ({"alpha": -0.1}, {"cap": 0}, {"clip": -1.0}, {"start": 3, "end": 2}):
        with pytest.raises(ValueError, match="AGM|start"):
            build_method("AGM", bad, ctx)
    with pytest.raises(SpecError, match="same parameter"):
        build_method("AGM", {"clip": 1.0, "grad_norm_clip": 2.0}, ctx)
    assert AGM.family is Family.OPTIMIZATION and AGM.windowed and AGM.extra_passes
    assert AGM.min_modalities == 2


def test_state_round_trip_continues_identically():
    info, batch = CASES[3]
    params = {"alpha": 0.3}
    first = step(params, info, batch)
    state = first.method.state_dict()
    weights = copy.deepcopy(first.model.state_dict())
    assert set(state["extra"]) == {"target", "count"}
    first.method.log.flush()
    nxt = toy_batch(info, n=32, seed=7)
    step(params, info, nxt, trainer=first)  # the uninterrupted second step
    restored = step(params, info, batch)  # a fresh run ...
    restored.method.load_state_dict(state)  # ... given the first step's state and weights
    restored.model.load_state_dict(weights)
    assert restored.method.count == 1
    restored.method.log.flush()
    step(params, info, nxt, trainer=restored)
    assert restored.method.count == first.method.count == 2
    torch.testing.assert_close(restored.method.target, first.method.target, rtol=0, atol=0)
    assert restored.method.log.flush() == first.method.log.flush()


# -- end to end --------------------------------------------------------------------------------

def test_run_on_mfeat_logs_every_quantity_and_costs_more_than_baseline(tmp_path):
    result = bbench.run("AGM", "mfeat", epochs=2, progress=False, output_root=str(tmp_path))
    history = json.loads(result.record_path.read_text())["history"]
    assert history == result.history and len(history) == 2
    modalities = [k[len("coef_"):] for k in history[0]["method"] if k.startswith("coef_")]
    assert len(modalities) == 2
    for epoch in history:
        logged = epoch["method"]
        for m in modalities:
            for q in ("coef", "score", "target", "ratio", "ratio_hat"):
                assert math.isfinite(logged[f"{q}_{m}"]), (q, m)
            assert 0 < logged[f"score_{m}"] <= SCORE_CAP
        assert 0 <= logged["clipped"] <= 1 and logged["active"] == 1.0
    baseline = bbench.run("Baseline", "mfeat", epochs=2, progress=False, output_root=str(tmp_path))
    assert result.metrics["train_flops"] > baseline.metrics["train_flops"]


def test_an_interrupted_run_resumes_with_the_same_running_means(tmp_path):
    settings = {"epochs": 3, "progress": False, "start": 1}
    whole = bbench.run("AGM", "mfeat-fac-fou-mor", output_root=str(tmp_path / "a"), **settings)

    resumed = interrupted_and_resumed("AGM", "mfeat-fac-fou-mor", 1,
                                      output_root=str(tmp_path / "b"), **settings)
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.metrics["acc"] == whole.metrics["acc"]
    first = whole.history[0]["method"]  # epoch 0 is before the window: T only
    assert "coef_fac" not in first and "target_fac" in first and first["active"] == 0.0
