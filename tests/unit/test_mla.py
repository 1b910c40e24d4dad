"""MLA (methods.md §5.3): the properties a correct implementation satisfies.

The projector stays symmetric PSD with unit Frobenius norm and shrinks along rᵀ by
α/(α + r P rᵀ); the run's first sub-step uses the plain head gradient and every later one
G Pᵀ exactly; sub-step m leaves every other encoder bit for bit as it was; the entropy gates
are positive, sum to one per sample and favour the most confident modality; plus the
reference α values, each public pitfall, the window, evaluation (Shapley's path, the
validation gate log), and whole runs through `bbench.run` (records, FLOPs, resume).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import bbench
from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.evaluate import eval_loader, predict
from bbench.engine.flops import count_forward_flops
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.mla import (MLA, entropy_gates, gated_fusion, projector_alpha,
                                update_projector)
from bbench.methods.registry import METHODS, build_method, method_params
from bbench.metrics.shapley import choose_path, subset_logits
from bbench.models.fusion import SharedHead
from bbench.models.modes import eval_mode
from bbench.models.multimodal import MultimodalModel
from bbench.testing.methods import BNEncoder, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed
from tests.unit.test_method_flops import BATCH, BUDGET, EPOCHS, Blocks, check

CPU = torch.device("cpu")
NAMES = {2: ("a", "b"), 3: ("a", "b", "c")}
DIMS = {2: (5, 3), 3: (5, 3, 4)}
WIDTHS = {"a": 8, "b": 5, "c": 6}  # different feature widths: H pads to d_max = 8
K = 4


def setup(M: int = 2, params: dict | None = None, bn: bool = True, n: int = 16,
          batch_size: int = 8, epochs: int = 1, optimizer: str = "sgd",
          val: dict | None = None) -> tuple[Trainer, MLA, dict]:
    """(trainer, method, batch) on a toy problem, with the method's fit start done."""
    info = toy_info(DIMS[M], K, NAMES[M])
    spec = ModelSpec(encoders={m: EncoderSpec("mlp", {"hidden": (WIDTHS[m],)}) for m in NAMES[M]})
    method = build_method("MLA", params or {}, RunContext(info, spec, 0, CPU))
    torch.manual_seed(0)
    if bn:
        encoders = {m: BNEncoder(d, WIDTHS[m]) for m, d in zip(NAMES[M], DIMS[M])}
        model = MultimodalModel(NAMES[M], encoders, SharedHead([WIDTHS[m] for m in NAMES[M]], K))
    else:
        model = method.build_model()
    batch = toy_batch(info, n=n, seed=1)
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    val_batch = val if val is not None else batch
    val_split = TensorMultimodalDataset({m: val_batch[m] for m in info.modalities}, val_batch["label"])
    train = TrainSpec(epochs=epochs, batch_size=batch_size, progress=False,
                      optimizer=OptimizerSpec(optimizer, lr=0.1, momentum=0.9, weight_decay=1e-2))
    trainer = Trainer(train, TrainingData(info, split, val_split), method, model, count_flops=False)
    method.on_fit_start(trainer)
    return trainer, method, batch


def info_at(j: int = 0, n_b: int = 4, active: bool = True, epoch: int = 0) -> StepInfo:
    return StepInfo(epoch, j, n_b, j, 0, active)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def reference_update(P: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """The §5.3 projector update written out independently (float64)."""
    P, r = P.double(), r.double().reshape(-1, 1)
    k = P @ r
    P = P - (k @ k.T) / (alpha + float(r.T @ k))
    return P / torch.linalg.matrix_norm(P)


def reference_gates(logits: list[torch.Tensor]) -> torch.Tensor:
    """λ_{m,i} = exp(max_k e_{k,i} − e_{m,i}) / Σ_j exp(max_k e_{k,i} − e_{j,i}), written out."""
    p = [u.double().softmax(1) for u in logits]
    e = torch.stack([-(q * q.log()).sum(1) for q in p])  # [M, B]: per sample, over classes
    w = torch.exp(e.max(0).values - e)
    return w / w.sum(0)


class SubStepRecorder:
    """Records, at every optimizer update of a trainer: the gradient H.weight received from
    backward (before any edit), every `.grad` as applied, the projector, the state of the
    model before the update, and each encoder's training-mode output."""

    def __init__(self, trainer: Trainer, method: MLA) -> None:
        model = trainer.model
        self.template = copy.deepcopy(model)  # taken before the hooks: references record nothing
        self.head_grads: list[torch.Tensor] = []
        self.applied: list[dict[str, torch.Tensor]] = []
        self.projectors: list[torch.Tensor] = []
        self.states = [copy.deepcopy(model.state_dict())]
        self.features: list[tuple[str, torch.Tensor]] = []
        model.head.fc.weight.register_hook(lambda g: self.head_grads.append(g.detach().clone()))
        for m in model.modalities:
            model.encoders[m].register_forward_hook(
                lambda mod, args, out, m=m: self.features.append((m, out.detach().clone())))
        inner = trainer.optimizer_step

        def recorded() -> None:
            self.applied.append({n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.grad is not None})
            self.projectors.append(method.projector.clone())
            inner()
            self.states.append(copy.deepcopy(model.state_dict()))

        trainer.optimizer_step = recorded

    def model_before(self, update: int) -> nn.Module:
        """A hook-free copy of the model as it was before update number `update`."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.states[update])
        return model


# -- the projector -------------------------------------------------------------------------------

@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31 - 1),
       st.floats(1e-3, 10.0), st.floats(0.0, 1.0))
@settings(max_examples=60, deadline=None)
def test_after_every_update_p_is_symmetric_psd_with_unit_norm_and_shrinks_along_r(
        d, updates, seed, scale, position):
    g = torch.Generator().manual_seed(seed)
    P = torch.eye(d, dtype=torch.float64)
    alpha = projector_alpha(round(position * 10), 10)
    for _ in range(updates):
        r = scale * torch.randn(1, d, generator=g, dtype=torch.float64)
        before = P
        P, shrink = update_projector(P, r, alpha)
        assert torch.equal(P, P.T)  # exactly: the scalar denominator keeps the symmetry
        assert float(torch.linalg.eigvalsh(P).min()) >= -1e-10
        assert float(torch.linalg.matrix_norm(P)) == pytest.approx(1.0, rel=1e-12)
        rPr = float(r @ before @ r.T)
        assert float(shrink) == pytest.approx(alpha / (alpha + rPr), rel=1e-6, abs=1e-12)
        assert float(shrink) <= 1 + 1e-12
        torch.testing.assert_close(P, reference_update(before, r, alpha), rtol=1e-10, atol=1e-12)


def test_reference_alpha_values():
    assert projector_alpha(0, 10) == pytest.approx(0.1, abs=1e-12)
    assert projector_alpha(0, 1) == pytest.approx(0.1, abs=1e-12)
    assert projector_alpha(5, 10) == pytest.approx(0.0316228, abs=5e-8)
    assert projector_alpha(20, 40) == pytest.approx(0.1 ** 1.5, rel=1e-12)


def test_pitfall_outer_product_denominator_would_break_the_symmetry():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    S = A @ A.T
    P = (S + S.T) / 2 / torch.linalg.matrix_norm(S)  # exactly symmetric PSD, not I (at P = I
    r = torch.randn(1, 6, generator=g, dtype=torch.float64)  # both forms agree)
    mine, _ = update_projector(P, r, 0.1)
    k = P @ r.T
    outer = P - (k @ k.T) / (0.1 + k @ r)  # the public (elementwise, d × d) denominator
    assert not torch.allclose(outer, outer.T)  # the test below would catch it
    assert torch.equal(mine, mine.T)


@pytest.mark.parametrize("M", [2, 3])
def test_the_projector_is_d_max_wide_not_a_hard_coded_size(M):
    trainer, method, _ = setup(M)
    d_max = max(WIDTHS[m] for m in NAMES[M])
    assert method.projector.shape == (d_max, d_max) == (trainer.model.head.d_max,) * 2
    assert method.projector.dtype == torch.float32
    assert torch.equal(method.projector, torch.eye(d_max)) and method.substeps == 0


# -- the sub-steps -------------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_each_sub_step_is_ce_of_u_m_and_every_head_gradient_after_the_first_is_g_p_transpose(M):
    trainer, method, batch = setup(M)
    model = trainer.model
    rec = SubStepRecorder(trainer, method)
    n_b = 4
    for j in (0, 2, 3):  # α_j at j = 0 (0.1), j = n_b/2 (0.0316...) and j = 3
        method.train_step(trainer, batch, info_at(j, n_b))
    assert len(rec.applied) == 3 * M  # M optimizer updates per batch
    P_ref = torch.eye(model.head.d_max, dtype=torch.float64)
    y = batch["label"]
    for s, (head_grad, applied, P) in enumerate(zip(rec.head_grads, rec.applied, rec.projectors)):
        j, i = (0, 2, 3)[s // M], s % M
        m = NAMES[M][i]
        # An independent sub-step on the model as it was before this update: only E_m runs.
        ref = rec.model_before(s)
        h = ref.encoders[m](batch[m])
        fc = ref.head.fc
        u = h @ fc.weight[:, :h.shape[1]].t() + fc.bias  # H(pad(h_m)) written out
        loss = F.cross_entropy(u, y)
        params = dict(ref.encoders[m].named_parameters(prefix=f"encoders.{m}"))
        params.update(dict(ref.head.named_parameters(prefix="head")))
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        assert set(applied) == set(params)  # only E_m and H have gradients
        torch.testing.assert_close(head_grad, grads["head.fc.weight"])
        for name in params:
            if name != "head.fc.weight":  # encoders and the head bias are never projected
                torch.testing.assert_close(applied[name], grads[name])
        if s == 0:  # the run's first sub-step: the unmodified gradient, P still I
            assert torch.equal(applied["head.fc.weight"], head_grad)
            assert torch.equal(P, torch.eye(model.head.d_max))
            continue
        assert torch.equal(applied["head.fc.weight"], head_grad @ P.t())  # replaced, exactly
        assert not torch.allclose(applied["head.fc.weight"], head_grad + head_grad @ P.t())
        r = F.pad(rec.features[s][1], (0, model.head.d_max - h.shape[1])).mean(0)
        assert rec.features[s][0] == m
        P_ref = reference_update(P_ref, r, projector_alpha(j, n_b))
        torch.testing.assert_close(P.double(), P_ref, rtol=1e-4, atol=1e-6)
        assert torch.equal(P, P.t())
        assert float(torch.linalg.eigvalsh(P.double()).min()) >= -1e-6
        assert float(torch.linalg.matrix_norm(P)) == pytest.approx(1.0, rel=1e-5)
    assert method.substeps == 3 * M


@pytest.mark.parametrize("M", [2, 3])
def test_logged_losses_and_shrink_are_the_sub_step_values(M):
    trainer, method, batch = setup(M)
    model = trainer.model
    rec = SubStepRecorder(trainer, method)
    out = method.train_step(trainer, batch, info_at(1, 4))
    logged = method.log.flush()
    assert set(logged) == {f"loss_{m}" for m in NAMES[M]} | {"proj_shrink"}
    losses, shrinks = [], []
    P = torch.eye(model.head.d_max, dtype=torch.float64)
    alpha = projector_alpha(1, 4)
    for i, m in enumerate(NAMES[M]):
        ref = rec.model_before(i)
        with torch.no_grad():
            losses.append(float(F.cross_entropy(ref.head.unimodal([ref.encoders[m](batch[m])], 0),
                                                batch["label"])))
        assert logged[f"loss_{m}"] == pytest.approx(losses[-1], rel=1e-6)
        if i:  # sub-step 0 is the run's first: no update, no shrink
            r = F.pad(rec.features[i][1], (0, model.head.d_max - WIDTHS[m])).mean(0, keepdim=True)
            shrinks.append(alpha / (alpha + float(r.double() @ P @ r.double().T)))
            P = reference_update(P, r, alpha)
    assert logged["proj_shrink"] == pytest.approx(sum(shrinks) / len(shrinks), rel=1e-4)
    assert all(s <= 1 for s in shrinks)
    assert float(out.loss) == pytest.approx(sum(losses) / M, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("M", [2, 3])
def test_sub_step_m_leaves_the_other_encoders_parameters_and_buffers_bit_for_bit(M, optimizer):
    trainer, method, batch = setup(M, {"start": 1}, optimizer=optimizer, epochs=2)
    model = trainer.model
    runs: dict[str, int] = {m: 0 for m in NAMES[M]}
    for m in NAMES[M]:
        model.encoders[m].register_forward_pre_hook(
            lambda mod, args, m=m: runs.__setitem__(m, runs[m] + 1))
    # A plain step first (epoch 0 is outside the window): every parameter has momentum (and
    # weight decay is on) and every BN layer moved its statistics, so "unchanged" below is
    # not for want of optimizer state.
    method.train_step(trainer, batch, info_at(0, 4, active=False))
    assert all(trainer.optimizer.state[p] for p in model.parameters())
    order: list[str] = []
    inner = trainer.optimizer_step
    before = {k: snapshot(model.encoders[k]) for k in NAMES[M]}  # before the sub-step's forward

    def checked() -> None:
        m = NAMES[M][len(order)]
        assert runs == {k: 1 for k in NAMES[M][:len(order) + 1]} | {k: 0 for k in NAMES[M][len(order) + 1:]}
        inner()
        for k in NAMES[M]:
            after = snapshot(model.encoders[k])
            if k == m:
                assert not same(after, before[k])
                assert not torch.equal(after["net.1.running_mean"], before[k]["net.1.running_mean"])
            else:
                assert same(after, before[k]), (m, k)
                assert all(p.grad is None for p in model.encoders[k].parameters())
            before[k] = after
        order.append(m)

    for k in runs:
        runs[k] = 0
    trainer.optimizer_step = checked
    method.train_step(trainer, batch, info_at(1, 4, epoch=1))
    assert order == list(NAMES[M])  # modality order, one update each


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_one_plain_step_on_ce_of_the_sum_and_the_projector_rests(M):
    trainer, method, batch = setup(M, {"start": 1})
    model = trainer.model
    reference = copy.deepcopy(model).train()
    updates = []
    inner = trainer.optimizer_step
    trainer.optimizer_step = lambda: (updates.append(1), inner())
    out = method.train_step(trainer, batch, info_at(0, 4, active=False))
    assert len(updates) == 1
    features = [reference.encoders[m](batch[m]) for m in NAMES[M]]
    expected = F.cross_entropy(sum(reference.head.unimodal(features, i) for i in range(M)),
                               batch["label"])
    torch.testing.assert_close(out.loss, expected.detach())
    for p, g in zip(model.parameters(), torch.autograd.grad(expected, list(reference.parameters()))):
        torch.testing.assert_close(p.grad, g)  # every encoder, no projection
    assert torch.equal(method.projector, torch.eye(model.head.d_max)) and method.substeps == 0
    assert method.log.flush() == {}
    method.train_step(trainer, batch, info_at(1, 4))
    assert len(updates) == 1 + M


# -- the entropy gate ------------------------------------------------------------------------------

@given(st.integers(2, 4), st.integers(1, 6), st.integers(2, 6), st.integers(0, 2**31 - 1),
       st.floats(0.01, 20.0))
@settings(max_examples=60, deadline=None)
def test_gates_are_positive_sum_to_one_and_favour_the_lowest_entropy_modality(M, B, classes, seed,
                                                                              scale):
    g = torch.Generator().manual_seed(seed)
    logits = [scale * torch.randn(B, classes, generator=g) for _ in range(M)]
    gates = entropy_gates(logits)
    assert gates.shape == (M, B)
    assert bool((gates > 0).all())
    torch.testing.assert_close(gates.sum(0), torch.ones(B), rtol=0, atol=1e-6)
    torch.testing.assert_close(gates.double(), reference_gates(logits), rtol=1e-5, atol=1e-6)
    entropy = torch.stack([-(u.double().softmax(1) * u.double().log_softmax(1)).sum(1) for u in logits])
    lowest = entropy.argmin(0)
    # (up to float32 rounding where two entropies are within it of each other)
    assert bool((gates[lowest, torch.arange(B)] >= gates.max(0).values - 1e-6).all())
    fused, same_gates = gated_fusion(logits)
    assert torch.equal(same_gates, gates)
    torch.testing.assert_close(fused.double(), (reference_gates(logits)[..., None]
                                                * torch.stack(logits).double()).sum(0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M", [2, 3, 5])
def test_identical_logits_give_each_modality_one_mth(M):
    u = torch.randn(7, 4, generator=torch.Generator().manual_seed(M))
    gates = entropy_gates([u] * M)
    torch.testing.assert_close(gates, torch.full((M, 7), 1 / M))
    torch.testing.assert_close(gated_fusion([u] * M)[0], u)


def test_pitfall_gating_over_the_first_two_modalities_only():
    flat = torch.zeros(2, 4)  # maximal entropy
    confident = torch.tensor([[9.0, 0, 0, 0], [0, 0, 0, 9.0]])
    gates = entropy_gates([flat, flat, confident])
    assert bool((gates.argmax(0) == 2).all())  # the third modality, the most confident, leads
    fused, _ = gated_fusion([flat, flat, confident])
    assert torch.equal(fused.argmax(1), torch.tensor([0, 3]))


def test_pitfall_entropy_over_the_batch_axis():
    # Sample 0: modality a is confident, b flat; sample 1 the other way round. Per-sample
    # entropies put the weight on a for sample 0 and on b for sample 1.
    a = torch.tensor([[8.0, 0, 0], [0.1, 0, 0]])
    b = torch.tensor([[0.1, 0, 0], [0, 8.0, 0]])
    gates = entropy_gates([a, b])
    assert gates[0, 0] > 0.5 > gates[0, 1]
    assert gates[1, 1] > 0.5 > gates[1, 0]
    torch.testing.assert_close(gates.double(), reference_gates([a, b]))


# -- evaluation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_eval_logits_are_the_entropy_gated_sum_of_the_padded_shared_head(M):
    trainer, method, batch = setup(M, bn=False)
    model = trainer.model
    method.train_step(trainer, batch, info_at(0, 4))  # away from the initialisation
    with eval_mode(model), torch.no_grad():
        fused, logits = method.eval_logits(model, batch)
        assert len(logits) == M
        for i, m in enumerate(NAMES[M]):
            h = model.encoders[m](batch[m])
            assert h.shape[1] == WIDTHS[m]
            fc = model.head.fc
            torch.testing.assert_close(logits[i], h @ fc.weight[:, :h.shape[1]].t() + fc.bias)
        expected = (reference_gates(logits)[..., None] * torch.stack(logits).double()).sum(0)
        torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-6)
        fused_only, none = method.eval_logits(model, batch, unimodal=False)
        assert torch.equal(fused_only, fused) and none == []
        present = [True] * M
        present[1] = False  # input masking: E_m sees zeros, its u_m joins the gate
        masked, masked_logits = method.eval_logits(model, batch, present)
        zeroed = {**batch, NAMES[M][1]: torch.zeros_like(batch[NAMES[M][1]])}
        expected_masked, expected_logits = method.eval_logits(model, zeroed)
        assert torch.equal(masked, expected_masked)
        assert all(torch.equal(x, y) for x, y in zip(masked_logits, expected_logits))
        # Shapley evaluates by masked passes, and its full subset is the gated evaluation.
        assert not MLA.default_evaluation() and model.separable
        assert choose_path(method, model) == "masked-passes"
        subsets = subset_logits(method, model, batch)
        assert torch.equal(subsets[-1], fused)
        torch.testing.assert_close(subsets[0], method.eval_logits(
            model, {**batch, **{m: torch.zeros_like(batch[m]) for m in NAMES[M]}})[0])


@pytest.mark.parametrize("M", [2, 3])
def test_gate_log_is_the_mean_gate_over_the_validation_pass_without_a_second_pass(M):
    info = toy_info(DIMS[M], K, NAMES[M])
    val = toy_batch(info, n=12, seed=7)  # batch size 8: two validation batches, 8 and 4
    trainer, method, _ = setup(M, {"start": 1}, bn=False, epochs=2, val=val)
    calls: list[tuple[int, bool]] = []
    inner = method.eval_logits

    def counted(model, batch, present=None, unimodal=True):
        calls.append((int(batch["label"].shape[0]), present is None))
        return inner(model, batch, present, unimodal)

    method.eval_logits = counted
    fit = trainer.fit()
    assert calls == [(8, True), (4, True)] * 2  # one validation pass an epoch, nothing more
    for h in fit.history:
        assert {f"gate_{m}" for m in NAMES[M]} <= set(h["method"])
    assert set(fit.history[0]["method"]) == {f"gate_{m}" for m in NAMES[M]} | {"active"}
    with eval_mode(trainer.model), torch.no_grad():  # the last validation saw these weights
        logits = [trainer.model.unimodal_logits(trainer.model.encode(val), i) for i in range(M)]
    expected = reference_gates(logits).mean(1)  # a mean over samples, not over batches
    gates = [fit.history[-1]["method"][f"gate_{m}"] for m in NAMES[M]]
    assert gates == pytest.approx(expected.tolist(), rel=1e-6)
    assert sum(gates) == pytest.approx(1.0, rel=1e-6)  # float32 gates
    # An evaluation after training (the test split, Shapley, FLOP probes) logs nothing.
    predict(method, trainer.model, eval_loader(trainer.data.val, 8), CPU)
    assert method.log.flush() == {}


# -- hyper-parameters, facts, state ------------------------------------------------------------------

def test_defaults_facts_and_balancemm_window_names():
    cls = METHODS.get("MLA")
    assert cls is MLA
    assert cls.family is Family.FEED_FORWARD and cls.windowed and cls.min_modalities == 2
    assert cls.extra_passes  # measured: see test_a_run_records_its_logs_and_predicted_flops
    p = method_params(MLA, {})
    assert isinstance(p, WindowParams) and (p.start, p.end) == (0, 80)
    aliased = method_params(MLA, {"modulation_starts": 2, "modulation_ends": 9})
    assert (aliased.start, aliased.end) == (2, 9)


def test_the_model_is_the_run_encoders_with_a_shared_head_the_optimizer_trains():
    trainer, method, _ = setup(3, bn=False)
    model = trainer.model
    assert isinstance(model.head, SharedHead) and model.modalities == NAMES[3]
    assert (model.head.fc.in_features, model.head.fc.out_features) == (max(WIDTHS.values()), K)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("M", [2, 3])
def test_the_projector_and_counter_are_the_state_a_resume_restores(M):
    trainer, method, batch = setup(M)
    for j in range(3):
        method.train_step(trainer, batch, info_at(j, 4))
    state = copy.deepcopy(method.state_dict())
    assert state["extra"]["substeps"] == 3 * M
    assert torch.equal(state["extra"]["projector"], method.projector)
    trained = copy.deepcopy(trainer.model.state_dict())
    optim = copy.deepcopy(trainer.optimizer.state_dict())
    method.train_step(trainer, batch, info_at(3, 4))
    continued = method.projector.clone()
    # A fresh trainer and method (fit start: P = I, n = 0), restored, continue identically.
    trainer2, method2, _ = setup(M)
    assert torch.equal(method2.projector, torch.eye(trainer2.model.head.d_max))
    trainer2.model.load_state_dict(trained)
    trainer2.optimizer.load_state_dict(optim)
    method2.load_state_dict(state)
    method2.train_step(trainer2, batch, info_at(3, 4))
    assert torch.equal(method2.projector, continued) and method2.substeps == 4 * M
    for a, b in zip(trainer.model.parameters(), trainer2.model.parameters()):
        assert torch.equal(a, b)


# -- whole runs ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mfeat_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mla")
    mla = bbench.run("MLA", "mfeat", output_root=str(root / "mla"), **BUDGET)
    base = bbench.run("Baseline", "mfeat", output_root=str(root / "base"), **BUDGET)
    return mla, base


@pytest.mark.slow
def test_a_run_records_its_logs_and_predicted_flops(mfeat_runs):
    mla, base = mfeat_runs
    blocks = Blocks()
    M, K_, d = blocks.M, blocks.K, blocks.feature_dim
    for h in mla.history:
        assert set(h["method"]) == {"active", "proj_shrink"} | {
            f"{k}_{m}" for k in ("loss", "gate") for m in blocks.modalities}
        assert 0 < h["method"]["proj_shrink"] <= 1
        assert sum(h["method"][f"gate_{m}"] for m in blocks.modalities) == pytest.approx(1.0)
        assert h["steps"] == blocks.n_batches
    assert mla.extra["shapley"]["path"] == "masked-passes" and "imbalance" in mla.metrics
    # Per sample and sub-step m: E_m forward and backward, H(pad(h_m)) forward and backward
    # (into H and h_m); no fused head. Sub-step m of every batch but the run's very first
    # adds the projector's matrix products (d = d_max, K classes), each counted as measured:
    # k = P rᵀ, k kᵀ, r k, the shrink's P_new rᵀ, and G Pᵀ.
    mm = lambda a, b: count_forward_flops(torch.mm, torch.zeros(*a), torch.zeros(*b))  # noqa: E731
    projector = mm((d, d), (d, 1)) + mm((d, 1), (1, d)) + mm((1, d), (d, 1)) \
        + mm((d, d), (d, 1)) + mm((K_, d), (d, d))
    assert projector == 2 * (3 * d * d + d + K_ * d * d)
    per_sample = sum(blocks.enc_fwd[m] + blocks.shared_fwd[i] + blocks.enc_bwd[m]
                     + blocks.shared_bwd[i] for i, m in enumerate(blocks.modalities))
    projected = EPOCHS * blocks.n_batches * M - 1
    predicted = EPOCHS * blocks.pass_samples * per_sample + projected * projector
    assert mla.metrics["train_flops_by_region"]["step"] == mla.metrics["train_flops"]
    ratios = check(mla.metrics, base.metrics, predicted, "MLA")
    # The encoders cost what Baseline's do: the excess is the projector (and the shared head
    # being as wide as the widest feature, here equal widths, so no more than the concat head).
    assert per_sample == pytest.approx(blocks.step(), rel=1e-9)
    assert ratios["excess_ratio"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.slow
def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(mfeat_runs, tmp_path):
    whole, _ = mfeat_runs
    resumed = interrupted_and_resumed("MLA", "mfeat", 0, output_root=str(tmp_path), **BUDGET)
    for key in ("acc", "f1", "acc_fac", "acc_mor", "imbalance", "train_flops", "train_steps",
                "best_epoch", "val_acc"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]


@pytest.mark.slow
def test_a_three_modality_run_logs_every_modality(tmp_path):
    result = bbench.run("MLA", "mfeat-fac-fou-mor", output_root=str(tmp_path), epochs=1,
                        batch_size=BATCH, progress=False,
                        **{"dataset.options": {"subsample_per_class": 20}})
    record = result.history[0]["method"]
    names = ("fac", "fou", "mor")
    assert set(record) == {"active", "proj_shrink"} | {f"{k}_{m}" for k in ("loss", "gate")
                                                       for m in names}
    assert sum(record[f"gate_{m}"] for m in names) == pytest.approx(1.0)
    assert math.isfinite(result.metrics["imbalance"])
    assert result.extra["shapley"]["path"] == "masked-passes"
