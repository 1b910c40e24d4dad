"""ReconBoost (methods.md §7.5): the properties a correct implementation satisfies.

Stage steps leave every other encoder (parameters and buffers) and β bit for bit as they
were, the stage loss is the boosting-weighted NLL, the ensemble is exactly β·Σ_m f_m, β
moves only in correction passes and an active epoch is M·(stage + correction) passes; plus
the hyper-parameters, the model, and whole runs through `bbench.run` (records, FLOPs, resume).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st
from torch import nn

import bbench
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.reconboost import (ReconBoost, ReconBoostModel, ReconBoostParams, stage_loss,
                                       stage_weights)
from bbench.methods.registry import METHODS, build_method, method_params
from bbench.models.modes import eval_mode
from bbench.testing.resume import interrupted_and_resumed
from bbench.testing.methods import BNEncoder, toy_batch, toy_info

CPU = torch.device("cpu")
NAMES = {2: ("a", "b"), 3: ("a", "b", "c")}
DIMS = {2: (5, 3), 3: (5, 3, 4)}
WIDTHS = {"a": 8, "b": 5, "c": 6}  # different feature widths: H pads to d_max = 8
K = 4


def setup(M: int = 2, params: dict | None = None, bn: bool = True, n: int = 16,
          batch_size: int = 8, epochs: int = 1, lr: float = 0.1, optimizer: str = "sgd"):
    """(trainer, method, batch): a ReconBoost method and its model on a toy problem."""
    info = toy_info(DIMS[M], K, NAMES[M])
    spec = ModelSpec(encoders={m: EncoderSpec("mlp", {"hidden": (WIDTHS[m],)}) for m in NAMES[M]})
    method = build_method("ReconBoost", params or {}, RunContext(info, spec, 0, CPU))
    torch.manual_seed(0)
    if bn:
        encoders = {m: BNEncoder(d, WIDTHS[m]) for m, d in zip(NAMES[M], DIMS[M])}
        model = ReconBoostModel(NAMES[M], encoders, K, method.params.boost_init)
    else:
        model = method.build_model()
    batch = toy_batch(info, n=n, seed=1)
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    train = TrainSpec(epochs=epochs, batch_size=batch_size, progress=False,
                      optimizer=OptimizerSpec(optimizer, lr=lr, momentum=0.9, weight_decay=1e-2))
    trainer = Trainer(train, TrainingData(info, split, split), method, model, count_flops=False)
    return trainer, method, batch


def stage_info(method: ReconBoost, index: int, epoch: int = 0) -> StepInfo:
    """The StepInfo of the first pass of modality `index`'s stage in an active epoch."""
    phase = index * (method.params.stage_epochs + method.params.correct_epochs)
    return StepInfo(epoch, 0, 1, 0, phase, True)


def correction_info(method: ReconBoost, epoch: int = 0) -> StepInfo:
    return StepInfo(epoch, 0, 1, 0, method.params.stage_epochs, True)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def padded_learner(model: ReconBoostModel, h: torch.Tensor) -> torch.Tensor:
    """H(pad(h)) written out: only the first d_m columns of H.weight see h_m."""
    fc = model.head.fc
    return h @ fc.weight[:, :h.shape[1]].t() + fc.bias


# -- stage steps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("M", [2, 3])
def test_a_stage_step_leaves_the_other_encoders_and_beta_bit_for_bit_unchanged(M, optimizer):
    trainer, method, batch = setup(M, optimizer=optimizer)
    model = trainer.model
    modes: dict[str, list[bool]] = {m: [] for m in NAMES[M]}
    for m in NAMES[M]:
        model.encoders[m].register_forward_pre_hook(
            lambda mod, args, m=m: modes[m].append(mod.training))
    # A correction step first: every parameter (β included) now has momentum state (weight
    # decay is on) and every BN layer updated statistics, so "unchanged" below is not for want
    # of optimizer state.
    method.train_step(trainer, batch, correction_info(method))
    assert all(modes[m] == [True] for m in NAMES[M])
    assert all(trainer.optimizer.state[p] for p in model.parameters())
    for index, m in enumerate(NAMES[M]):
        for v in modes.values():
            v.clear()
        before = {k: snapshot(model.encoders[k]) for k in NAMES[M]}
        head_before, beta_before = snapshot(model.head), model.beta.detach().clone()
        method.train_step(trainer, batch, stage_info(method, index))
        for k in NAMES[M]:
            if k == m:
                assert modes[k] == [True]  # E_m trains (batch statistics)
                assert not same(snapshot(model.encoders[k]), before[k])
                after = snapshot(model.encoders[k])
                assert not torch.equal(after["net.1.running_mean"], before[k]["net.1.running_mean"])
                assert all(p.grad is not None for p in model.encoders[k].parameters())
            else:
                assert modes[k] == [False]  # the other encoders run in eval mode
                assert same(snapshot(model.encoders[k]), before[k]), k  # parameters and buffers
                assert all(p.grad is None for p in model.encoders[k].parameters())
        assert torch.equal(model.beta.detach(), beta_before)
        assert model.beta.grad is None
        assert not same(snapshot(model.head), head_before)  # H is trained in every stage
        assert model.training and all(model.encoders[k].training for k in NAMES[M])


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("w2", [1.0, 0.0, 2.5])
def test_the_stage_step_backpropagates_the_boosting_loss_into_e_m_and_h_only(M, w2):
    trainer, method, batch = setup(M, {"weight1": 5.0, "weight2": w2})
    model = trainer.model
    method.train_step(trainer, batch, correction_info(method))  # β and H away from their init
    y = batch["label"]
    for index, m in enumerate(NAMES[M]):
        reference = copy.deepcopy(model)
        out = method.train_step(trainer, batch, stage_info(method, index))
        # Recompute independently on the pre-step copy: F_{-m} with the others in eval mode.
        with torch.no_grad():
            rest = sum(padded_learner(reference, reference.encoders[k].eval()(batch[k]))
                       for k in NAMES[M] if k != m) * reference.beta
        f_m = padded_learner(reference, reference.encoders[m].train()(batch[m]))
        q_y = rest.softmax(1).gather(1, y[:, None]).squeeze(1)
        p_y = f_m.softmax(1).gather(1, y[:, None]).squeeze(1)
        expected = (((5.0 - w2 * q_y) / K) * -torch.log(p_y)).mean()
        torch.testing.assert_close(out.loss, expected.detach())
        if w2 == 0:
            torch.testing.assert_close(out.loss, 5.0 / K * F.cross_entropy(f_m, y).detach())
        params = list(reference.encoders[m].parameters()) + list(reference.head.parameters())
        grads = torch.autograd.grad(expected, params)
        live = list(model.encoders[m].parameters()) + list(model.head.parameters())
        for p, g in zip(live, grads):  # .grad stays until the next step's zero_grad
            torch.testing.assert_close(p.grad, g)
        logged = method.log.flush()
        assert logged[f"q_true_{m}"] == pytest.approx(float(q_y.mean()), rel=1e-5)
        assert logged[f"stage_loss_{m}"] == pytest.approx(float(out.loss), rel=1e-6)


def test_per_sample_stage_loss_and_its_w2_zero_case():
    g = torch.Generator().manual_seed(0)
    K6 = 6
    learner, others = torch.randn(32, K6, generator=g), 3 * torch.randn(32, K6, generator=g)
    y = torch.randint(0, K6, (32,), generator=g)
    per_sample, q_y = stage_loss(learner, others, y, 5.0, 1.0)
    q = others.softmax(1)[torch.arange(32), y]
    p = learner.softmax(1)[torch.arange(32), y]
    torch.testing.assert_close(q_y, q)
    torch.testing.assert_close(per_sample, (5.0 - 1.0 * q) / K6 * -torch.log(p))
    plain, _ = stage_loss(learner, others, y, 5.0, 0.0)
    torch.testing.assert_close(plain, 5.0 / K6 * F.cross_entropy(learner, y, reduction="none"))
    # q carries no gradient: only the learner is trained
    learner.requires_grad_(True)
    others.requires_grad_(True)
    stage_loss(learner, others, y, 5.0, 1.0)[0].sum().backward()
    assert learner.grad is not None and others.grad is None


def test_reference_weight():
    assert float(stage_weights(torch.tensor(0.5, dtype=torch.float64), 5.0, 1.0, 6)) \
        == pytest.approx(0.75, abs=1e-12)
    # the same through the loss: F_{-m} with q_y = 1/2 exactly (label logit log 5, the others 0)
    others = torch.zeros(1, 6, dtype=torch.float64)
    others[0, 2] = math.log(5.0)
    learner = torch.randn(1, 6, dtype=torch.float64)
    per_sample, q_y = stage_loss(learner, others, torch.tensor([2]), 5.0, 1.0)
    assert float(q_y) == pytest.approx(0.5, abs=1e-12)
    nll = -float(learner.log_softmax(1)[0, 2])
    assert float(per_sample) == pytest.approx(0.75 * nll, rel=1e-12)


@given(st.floats(0, 1), st.floats(0, 1), st.floats(1e-3, 10), st.floats(0, 1),
       st.integers(2, 100))
@settings(max_examples=300, deadline=None)
def test_the_stage_weight_is_non_increasing_in_q_and_decreasing_when_w2_is_positive(
        q1, q2, w1, w2_share, classes):
    w2 = w1 * w2_share  # 0 <= w2 <= w1
    lo, hi = sorted((q1, q2))
    weights = stage_weights(torch.tensor([lo, hi], dtype=torch.float64), w1, w2, classes)
    assert float(weights[0]) >= float(weights[1])
    assert float(weights.min()) >= 0  # w2 <= w1 keeps every weight non-negative
    if w2 == 0:
        assert float(weights[0]) == float(weights[1]) == pytest.approx(w1 / classes)
    assume(w2 >= 1e-3 and hi - lo >= 1e-6)
    assert float(weights[0]) > float(weights[1])


# -- the ensemble ----------------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_ensemble_logits_are_beta_times_the_sum_of_the_learners(M):
    trainer, method, batch = setup(M, bn=False)
    model = trainer.model
    with torch.no_grad():
        model.beta.fill_(0.37)
    with eval_mode(model), torch.no_grad():
        fused, learners = method.eval_logits(model, batch)
        assert len(learners) == M
        assert torch.equal(fused, model.beta * torch.stack(learners).sum(0))
        torch.testing.assert_close(fused, 0.37 * sum(learners), rtol=1e-5, atol=1e-6)
        assert torch.equal(model(batch), fused)
        for i, m in enumerate(NAMES[M]):  # f_m = H(pad(h_m)), d_m read from the encoder
            h = model.encoders[m](batch[m])
            torch.testing.assert_close(learners[i], padded_learner(model, h))
        fused_only, none = method.eval_logits(model, batch, unimodal=False)
        assert torch.equal(fused_only, fused) and none == []
        # present[m] False: E_m sees a zero raw input (input masking), as the default does
        present = [True] * M
        present[1] = False
        masked, masked_learners = method.eval_logits(model, batch, present)
        zeroed = {**batch, NAMES[M][1]: torch.zeros_like(batch[NAMES[M][1]])}
        expected, expected_learners = method.eval_logits(model, zeroed)
        assert torch.equal(masked, expected)
        assert all(torch.equal(a, b) for a, b in zip(masked_learners, expected_learners))


@pytest.mark.parametrize("M", [2, 3])
def test_a_correction_step_trains_every_parameter_on_ce_of_the_ensemble(M):
    trainer, method, batch = setup(M)
    model = trainer.model
    reference = copy.deepcopy(model).train()
    out = method.train_step(trainer, batch, correction_info(method))
    features = [reference.encoders[m](batch[m]) for m in NAMES[M]]
    expected = F.cross_entropy(reference.beta * sum(padded_learner(reference, h) for h in features),
                               batch["label"])
    torch.testing.assert_close(out.loss, expected.detach())
    grads = torch.autograd.grad(expected, list(reference.parameters()))
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
    assert model.beta.grad is not None
    assert not torch.equal(model.beta.detach(), reference.beta.detach())
    assert method.log.flush()["correct_loss"] == pytest.approx(float(out.loss), rel=1e-6)


# -- epoch structure -----------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_phases_are_m_times_stage_plus_correction_inside_the_window_and_one_outside(M):
    _, method, _ = setup(M, {"stage_epochs": 2, "correct_epochs": 1, "start": 1, "end": 2})
    assert [method.phases(e) for e in range(5)] == [1, 3 * M, 3 * M, 1, 1]
    assert setup(M, {"T_epochs": 3})[1].phases(0) == 6 * M
    assert setup(M, {"correct_epochs": 0})[1].phases(0) == M
    assert setup(M)[1].phases(0) == 2 * M  # the BalanceMM defaults: one stage, one correction


@pytest.mark.parametrize("M", [2, 3])
def test_stages_run_in_modality_order_and_beta_moves_only_in_correction_passes(M):
    trainer, method, _ = setup(M, {"stage_epochs": 2, "correct_epochs": 1, "start": 1}, epochs=2)
    model = trainer.model
    seen = []
    inner = method.train_step

    def recording(loop, batch, step):
        encoders = {m: snapshot(model.encoders[m]) for m in NAMES[M]}
        beta = model.beta.detach().clone()
        result = inner(loop, batch, step)
        moved = tuple(m for m in NAMES[M] if not same(snapshot(model.encoders[m]), encoders[m]))
        seen.append((step.epoch, step.phase, step.active, moved,
                     not torch.equal(model.beta.detach(), beta)))
        return result

    method.train_step = recording
    trainer.fit()
    steps_per_pass = 2  # 16 samples, batch 8
    assert len(seen) == steps_per_pass * (1 + 3 * M)
    everyone = tuple(NAMES[M])
    for epoch, phase, active, moved, beta_moved in seen:
        if epoch == 0:  # outside the window: one correction pass
            assert (phase, active, moved, beta_moved) == (0, False, everyone, True)
            continue
        assert active
        index, within = divmod(phase, 3)
        if within < 2:  # stage of modality `index`: only E_m moved, β did not
            assert (moved, beta_moved) == ((NAMES[M][index],), False)
        else:
            assert (moved, beta_moved) == (everyone, True)
    assert [s[1] for s in seen if s[0] == 1] == [p for p in range(3 * M)
                                                 for _ in range(steps_per_pass)]
    record = trainer.history[1]["method"]
    assert {f"stage_loss_{m}" for m in NAMES[M]} | {f"q_true_{m}" for m in NAMES[M]} \
        | {"beta", "correct_loss", "active"} == set(record)
    assert trainer.history[0]["method"].keys() == {"beta", "correct_loss", "active"}
    assert trainer.history[0]["steps"] == steps_per_pass
    assert trainer.history[1]["steps"] == steps_per_pass * 3 * M


# -- hyper-parameters, model and facts ------------------------------------------------------------

def params(**settings) -> ReconBoostParams:
    return method_params(ReconBoost, settings)


def test_defaults_are_balancemm_and_ranges_are_checked():
    p = params()
    assert (p.stage_epochs, p.correct_epochs, p.weight1, p.weight2, p.boost_init, p.start, p.end) \
        == (1, 1, 5.0, 1.0, 0.01, 0, 80)
    assert params(correct_epochs=0).correct_epochs == 0
    assert params(weight2=5.0).weight2 == 5.0 and params(weight2=0).weight2 == 0.0
    with pytest.raises(SpecError, match=r"ReconBoost: weight2=6.0 is out of range; need "
                                        r"0 <= weight2 <= weight1 \(weight1=5.0\)"):
        params(weight2=6)
    for bad, pattern in [({"weight2": -0.5}, "weight2 >= 0"), ({"weight1": 0}, "weight1 > 0"),
                         ({"boost_init": 0}, "boost_init > 0"),
                         ({"stage_epochs": 0}, "stage_epochs >= 1"),
                         ({"correct_epochs": -1}, "correct_epochs >= 0"),
                         ({"T_epochs": 0}, "T_epochs >= 1"),
                         ({"stage_epochs": 1.5}, "must be an integer"),
                         ({"start": 5, "end": 2}, "after end")]:
        with pytest.raises(SpecError, match=pattern):
            params(**bad)
    assert (params(modulation_starts=2, modulation_ends=9).start,
            params(modulation_starts=2, modulation_ends=9).end) == (2, 9)


def test_t_epochs_sets_both_pass_counts_and_is_the_same_run_as_setting_them():
    assert params(T_epochs=3) == params(stage_epochs=3, correct_epochs=3)
    assert params(T_epochs=3, stage_epochs=3) == params(stage_epochs=3, correct_epochs=3)
    with pytest.raises(SpecError, match="T_epochs=3 sets stage_epochs and correct_epochs"):
        params(T_epochs=3, stage_epochs=2)
    via_alias = resolve_spec("ReconBoost", "mfeat", {"T_epochs": 2}).method_params
    explicit = resolve_spec("ReconBoost", "mfeat",
                            {"stage_epochs": 2, "correct_epochs": 2}).method_params
    assert via_alias == explicit
    assert [via_alias[k] for k in ("stage_epochs", "correct_epochs", "T_epochs")] == [2, 2, None]
    # the recorded (resolved) settings validate to the same parameters again (resume)
    assert method_params(ReconBoost, via_alias) == params(T_epochs=2)


def test_the_model_has_encoders_a_padded_shared_head_and_beta_the_optimizer_trains():
    trainer, method, batch = setup(3, {"boost_init": 0.25}, bn=False)
    model = trainer.model
    assert isinstance(model, ReconBoostModel) and not model.separable
    assert model.modalities == NAMES[3]
    assert (model.head.fc.in_features, model.head.fc.out_features) == (max(WIDTHS.values()), K)
    assert float(model.beta.detach()) == 0.25 and model.beta.shape == ()
    assert "beta" in model.state_dict()  # checkpointed with the model
    names = [n for n, _ in model.named_parameters()]
    encoders = [n for n in names if n.startswith("encoders.")]
    assert [n.split(".")[1] for n in encoders] == sorted([n.split(".")[1] for n in encoders],
                                                        key=NAMES[3].index)  # modality order
    assert names.index("head.fc.weight") > names.index(encoders[-1])  # encoders before the head
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}


def test_class_facts():
    cls = METHODS.get("ReconBoost")
    assert cls is ReconBoost
    assert cls.family is Family.OPTIMIZATION and cls.windowed and cls.extra_passes
    assert cls.min_modalities == 2
    assert cls.imbalance_undefined and "input masking" in cls.imbalance_undefined
    assert not cls.default_evaluation()


# -- whole runs -----------------------------------------------------------------------------------

FAST = {"epochs": 2, "progress": False}


@pytest.fixture(scope="module")
def mfeat_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reconboost")
    recon = bbench.run("ReconBoost", "mfeat", output_root=str(root / "recon"), **FAST)
    base = bbench.run("Baseline", "mfeat", output_root=str(root / "base"), **FAST)
    return recon, base


def test_a_run_records_the_logs_the_reason_instead_of_an_imbalance_and_more_flops(mfeat_runs):
    recon, base = mfeat_runs
    modalities = recon.spec["dataset"]["modalities"] or ("fac", "mor")
    for h in recon.history:
        expected = {"beta", "correct_loss", "active"} | {
            f"{k}_{m}" for k in ("stage_loss", "q_true") for m in modalities}
        assert set(h["method"]) == expected
        assert h["method"]["active"] == 1.0
        assert h["steps"] == 2 * len(modalities) * base.history[0]["steps"]  # M·(1 + 1) passes
    assert "imbalance" not in recon.metrics and "shapley" not in recon.metrics
    assert recon.extra["shapley"] == {"not_computed": ReconBoost.imbalance_undefined}
    assert "imbalance" in base.metrics
    assert recon.metrics["train_flops"] > base.metrics["train_flops"]
    assert recon.metrics["acc"] > 0.5  # it learns


def test_a_three_modality_run_logs_every_modality(tmp_path):
    result = bbench.run("ReconBoost", "mfeat-fac-fou-mor", output_root=str(tmp_path), epochs=1,
                        progress=False)
    record = result.history[0]["method"]
    assert {f"stage_loss_{m}" for m in ("fac", "fou", "mor")} <= set(record)
    assert {f"q_true_{m}" for m in ("fac", "fou", "mor")} <= set(record)
    assert result.extra["shapley"]["not_computed"] == ReconBoost.imbalance_undefined


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(mfeat_runs, tmp_path):
    whole, _ = mfeat_runs

    resumed = interrupted_and_resumed("ReconBoost", "mfeat", 0, output_root=str(tmp_path), **FAST)
    for key in ("acc", "f1", "acc_fac", "acc_mor", "train_flops", "train_steps", "best_epoch",
                "val_acc"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert resumed.extra["shapley"] == whole.extra["shapley"]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
