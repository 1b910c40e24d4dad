"""LFM (methods.md §6.7): the properties a correct implementation satisfies, its pitfalls,
its training FLOPs and a run end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

import bbench
from bbench.cli import main
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.evaluate import eval_loader
from bbench.engine.flops import count_forward_flops
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.lfm import LFM, alignment, fitted_kappa_cls
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.models.fusion import ConcatHead
from bbench.models.multimodal import MultimodalModel, build_multimodal_model
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed
from tests.unit.test_method_flops import BATCH, BUDGET, EPOCHS, Blocks, backward_flops, check

CPU = torch.device("cpu")
INFOS = {2: toy_info(dims=(6, 4), num_classes=3),
         3: toy_info(dims=(6, 4, 5), num_classes=3, names=("a", "b", "c"))}
BATCHES = {M: toy_batch(info, n=64) for M, info in INFOS.items()}
FAST = {"epochs": 2, "progress": False, "dataset.options": {"subsample_per_class": 20}}
SETTINGS = settings(max_examples=25, deadline=None)
TANH = ModelSpec(encoders={"*": EncoderSpec("mlp", {"hidden": (7,), "activation": "tanh"})})


def make_method(info, model_spec: ModelSpec = ModelSpec(), **params: Any) -> LFM:
    return build_method("LFM", params, RunContext(info, model_spec, 0, CPU))


class Recording(Dataset):
    """A split that records which sample indices were read, or refuses every read."""

    def __init__(self, batch: dict[str, torch.Tensor], modalities, refuse: bool = False) -> None:
        self.inner = TensorMultimodalDataset({m: batch[m] for m in modalities}, batch["label"])
        self.refuse = refuse
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.inner)

    def _record(self, indices: list[int]) -> None:
        if self.refuse:
            raise AssertionError("the weight update read the training split")
        self.read.extend(indices)

    def __getitem__(self, i: int):
        self._record([int(i)])
        return self.inner[i]

    def __getitems__(self, indices):
        self._record([int(i) for i in indices])
        return self.inner.__getitems__(indices)


def make_trainer(M: int = 2, model: nn.Module | None = None, model_spec: ModelSpec = ModelSpec(),
                 val: Dataset | None = None, train: Dataset | None = None, **params: Any):
    """A Trainer around an LFM of the toy data; the model from a fixed initialisation."""
    info, batch = INFOS[M], BATCHES[M]
    method = make_method(info, model_spec, **params)
    torch.manual_seed(0)
    model = model if model is not None else method.build_model()
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    data = TrainingData(info, train if train is not None else split, val if val is not None else split)
    trainer = Trainer(TrainSpec(optimizer=OptimizerSpec(lr=0.1), epochs=1, progress=False), data,
                      method, model, count_flops=False)
    return trainer, method


def bn_model(info) -> MultimodalModel:
    """Encoders with batch norm (running statistics that a train-mode pass would write)."""
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(info.input_shapes[m][0], 6), nn.BatchNorm1d(6), nn.Tanh())
                for m in info.modalities}
    model = MultimodalModel(info.modalities, encoders, ConcatHead([6] * len(info.modalities),
                                                                  info.num_classes))
    with torch.no_grad():  # running statistics far from any batch's: the mode shows in g_α
        for enc in encoders.values():
            enc[1].running_mean.fill_(3.0)
            enc[1].running_var.fill_(0.25)
    return model


def first_samples(M: int, n: int) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in BATCHES[M].items()}


def released_alignment(logits: list[torch.Tensor]) -> torch.Tensor:
    """The released form in float64: mean over pairs of ½[KL(π‖p_a) + KL(π‖p_b)], with
    F.kl_div(log p, π) = KL(π‖p), π = ½(p_a + p_b)."""
    logp = [z.double().log_softmax(-1) for z in logits]
    terms = []
    for a in range(len(logp)):
        for b in range(a + 1, len(logp)):
            mixture = 0.5 * (logp[a].exp() + logp[b].exp())
            terms.append(0.5 * (F.kl_div(logp[a], mixture, reduction="batchmean")
                                + F.kl_div(logp[b], mixture, reduction="batchmean")))
    return torch.stack(terms).mean()


def reference_objective(model, batch, kappa_cls: float, kappa_align: float):
    features = model.encode(batch)
    logits = model.fuse(features)
    unimodal = [model.unimodal_logits(features, i) for i in range(len(model.modalities))]
    ce = F.cross_entropy(logits, batch["label"])
    return ce, released_alignment(unimodal), kappa_cls * ce + kappa_align * released_alignment(unimodal)


def full_hvp_first_block(model, batch, kappa_cls: float, kappa_align: float) -> torch.Tensor:
    """The released computation: the whole (∂²L_tot/∂θ²)·g_cls over every parameter, then
    its first tensor's block (eval mode, as the update must run)."""
    params = list(model.parameters())
    model.eval()
    ce, _, total = reference_objective(model, batch, kappa_cls, kappa_align)
    g_tot = torch.autograd.grad(total, params, create_graph=True)
    g_cls = torch.autograd.grad(ce, params, retain_graph=True)
    hvp = torch.autograd.grad(g_tot, params, grad_outputs=g_cls)
    model.train()
    return hvp[0]


def random_logits(M: int, seed: int, B: int = 6, K: int = 5, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, K, generator=g) for _ in range(M)]


# -- class facts and hyper-parameters --------------------------------------------------------

def test_class_facts_defaults_and_the_initial_weights_are_not_swapped():
    assert LFM.family is Family.OBJECTIVE and LFM.windowed and LFM.extra_passes
    assert LFM.min_modalities == 2
    method = make_method(INFOS[2])
    p = method.params
    assert (p.schedule, p.lr_alpha, p.kappa_align_init, p.alpha_samples, p.start, p.end) == \
        ("learnable", 1e-4, 0.95, 8, 0, 80)
    # Pitfall: the released trainer starts from κ_cls = 0.95, κ_align = 0.05.
    assert method.kappa_align == 0.95
    assert method.kappa_cls == pytest.approx(0.05, abs=1e-15)
    assert method.lr_alpha == 1e-4


@pytest.mark.parametrize("params", [{"lr_alpha": 0.0}, {"lr_alpha": -1e-4},
                                    {"kappa_align_init": 0.01}, {"kappa_align_init": 0.99},
                                    {"alpha_samples": 0}, {"schedule": "epoch"},
                                    {"start": 5, "end": 2}])
def test_out_of_range_hyper_parameters_are_rejected(params):
    with pytest.raises((ValueError, SpecError)):
        make_method(INFOS[2], **params)


def test_balancemm_key_names_are_accepted():
    method = make_method(INFOS[2], method="fitted", modulation_starts=2, modulation_ends=9)
    assert (method.params.schedule, method.params.start, method.params.end) == ("fitted", 2, 9)


# -- A ≥ 0, symmetric, 0 iff the softmaxes are equal ----------------------------------------

@SETTINGS
@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 40.0))
def test_alignment_is_non_negative_symmetric_and_the_released_form(M, seed, scale):
    logits = random_logits(M, seed, scale=scale)
    a = alignment(logits)
    assert a.dtype == torch.float32 and float(a) >= 0
    for order in ([1, 0, 2], [2, 1, 0], [0, 2, 1]) if M == 3 else ([1, 0],):
        torch.testing.assert_close(alignment([logits[i] for i in order]), a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.double(), released_alignment(logits), rtol=1e-5, atol=1e-6)


def test_alignment_of_a_pair_is_exactly_symmetric():
    za, zb = random_logits(2, 11)
    assert torch.equal(alignment([za, zb]), alignment([zb, za]))


@SETTINGS
@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 40.0),
       shift=st.floats(-50.0, 50.0), bump=st.floats(0.05, 5.0))
def test_alignment_is_zero_iff_the_unimodal_softmaxes_are_identical(M, seed, scale, shift, bump):
    z = random_logits(1, seed, scale=scale)[0]
    assert float(alignment([z.clone() for _ in range(M)])) == 0.0
    # the same softmaxes from shifted logits: 0 up to the rounding of log_softmax
    shifted = [z + shift * m for m in range(M)]
    assert 0 <= float(alignment(shifted)) <= 1e-6
    # one modality's softmax differs (its top logit moved, so the change is not a float32
    # underflow of a ~e^-100 probability): strictly positive
    other = z.clone()
    other[0, z[0].argmax()] += bump
    assert float(alignment([z] * (M - 1) + [other])) > 0


def identical_modalities(M: int):
    """A model whose modalities have the same encoder weights, head blocks and inputs, so every
    z_m is the same tensor value."""
    info = toy_info(dims=(4,) * M, num_classes=3, names=("a", "b", "c")[:M])
    method = make_method(info)
    torch.manual_seed(0)
    model = method.build_model()
    with torch.no_grad():
        first = model.encoders[info.modalities[0]].state_dict()
        for m in info.modalities[1:]:
            model.encoders[m].load_state_dict(first)
        block = model.head.weight_block(0).clone()
        for i in range(1, M):
            model.head.weight_block(i).copy_(block)
    batch = toy_batch(info, n=16)
    for m in info.modalities[1:]:
        batch[m] = batch[info.modalities[0]].clone()
    return method, model, batch


@pytest.mark.parametrize("M", [2, 3])
def test_identical_unimodal_softmaxes_give_zero_alignment_and_two_kappa_cls_ce(M):
    method, model, batch = identical_modalities(M)
    method.kappa_cls, method.kappa_align = 0.3, 0.7
    out = method.forward(model, batch, StepInfo(0, 0, 1, 0))
    loss = method.loss(out, batch, StepInfo(0, 0, 1, 0))
    assert method.log.flush()["align_loss"] == 0.0
    ce = F.cross_entropy(out.logits, batch["label"])
    assert torch.equal(loss, 2 * (0.3 * ce))


# -- the step's loss ------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_the_active_step_minimises_two_times_the_weighted_ce_and_alignment(M):
    info, batch = INFOS[M], BATCHES[M]
    trainer, step = one_step("LFM", {"lr_alpha": 10.0, "kappa_align_init": 0.5}, info, batch)
    method = trainer.method
    kc, ka = method.kappa_cls, method.kappa_align
    assert ka != 0.5 and 0.05 < ka < 0.95  # the epoch-0 update ran before the step
    torch.manual_seed(0)  # the initialisation one_step used, before its optimizer step
    fresh = method.build_model()
    ce, align, _ = reference_objective(fresh, batch, kc, ka)
    expected = 2 * (kc * ce + ka * align)
    torch.testing.assert_close(step.loss.double(), expected.double(), rtol=1e-5, atol=1e-6)
    expected.backward()
    got = grads_of(trainer.model)
    for name, p in fresh.named_parameters():
        torch.testing.assert_close(got[name], p.grad.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("M", [2, 3])
def test_kappa_one_zero_gives_twice_the_cross_entropy(M):
    info, batch = INFOS[M], BATCHES[M]
    trainer, method = make_trainer(M)
    method.kappa_cls, method.kappa_align = 1.0, 0.0  # unreachable by configuration (clip)
    out = method.forward(trainer.model, batch, StepInfo(0, 0, 1, 0))
    loss = method.loss(out, batch, StepInfo(0, 0, 1, 0))
    assert torch.equal(loss, 2 * F.cross_entropy(out.logits, batch["label"]))
    loss.backward()
    base, _ = one_step("Baseline", {}, info, batch, lr=0.0)
    for name, g in grads_of(base.model).items():
        torch.testing.assert_close(dict(trainer.model.named_parameters())[name].grad, 2 * g,
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_the_step_is_baselines_and_kappa_is_not_updated(M):
    info, batch = INFOS[M], BATCHES[M]
    base, base_out = one_step("Baseline", {}, info, batch)
    lfm, lfm_out = one_step("LFM", {"start": 3, "lr_alpha": 10.0}, info, batch, epoch=1)
    assert torch.equal(base_out.loss, lfm_out.loss)
    gb, gl = grads_of(base.model), grads_of(lfm.model)
    assert gb.keys() == gl.keys()
    for name in gb:
        assert torch.equal(gb[name], gl[name]), name
    method = lfm.method
    counter = FlopCounterMode(display=False)
    with counter:
        method.on_epoch_start(lfm, 2)
    assert counter.get_total_flops() == 0  # no Hessian-vector product
    assert (method.kappa_align, method.lr_alpha) == (0.95, 10.0)
    assert method.log.flush() == {}


# -- κ_cls + κ_align = 1; the fitted schedule ------------------------------------------------

def test_the_fitted_schedule_reference_values_clip_and_cap():
    assert fitted_kappa_cls(0) == pytest.approx(0.204624, abs=1e-6)
    assert fitted_kappa_cls(50) == pytest.approx(0.436681, abs=1e-6)
    assert fitted_kappa_cls(100) == pytest.approx(0.539155, abs=1e-6)
    assert fitted_kappa_cls(180) == 0.95  # the polynomial exceeds 1 there
    assert fitted_kappa_cls(199) == pytest.approx(0.9159887524, abs=1e-9)
    assert fitted_kappa_cls(200) == fitted_kappa_cls(250) == fitted_kappa_cls(10_000) == \
        fitted_kappa_cls(199)  # capped at e = 199 (the polynomial collapses after 200)


@pytest.mark.parametrize("M", [2, 3])
def test_fitted_weights_sum_to_one_at_every_epoch_and_no_update_is_computed(M):
    # Pitfall: the released trainer runs the learnable update whatever the schedule.
    trainer, method = make_trainer(M, schedule="fitted", start=0, end=10_000)

    def refuse(*args, **kwargs):
        raise AssertionError("the learnable update ran under the fitted schedule")

    method.alpha_gradient = refuse
    method.held_out = refuse
    for epoch in (0, 1, 50, 100, 179, 180, 199, 200, 5_000):
        counter = FlopCounterMode(display=False)
        with counter:
            method.on_epoch_start(trainer, epoch)
        assert counter.get_total_flops() == 0
        assert method.kappa_cls == fitted_kappa_cls(epoch)
        assert method.kappa_cls + method.kappa_align == pytest.approx(1.0, abs=1e-15)
        logged = method.log.flush()
        assert set(logged) == {"kappa_cls", "kappa_align"}
        assert logged["kappa_cls"] == method.kappa_cls


@settings(max_examples=60, deadline=None)
@given(epoch=st.integers(0, 100_000))
def test_fitted_weights_stay_in_range(epoch):
    kc = fitted_kappa_cls(epoch)
    assert 0.05 <= kc <= 0.95 and 0.05 <= 1 - kc <= 0.95


# -- the learnable update -------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_alpha_grad_is_the_first_block_mean_of_the_hessian_vector_product(M):
    trainer, method = make_trainer(M)
    model = trainer.model
    first = next(iter(model.parameters()))
    assert first is model.encoders[INFOS[M].modalities[0]].stages[0][0].weight
    batch = first_samples(M, 8)
    method.kappa_cls, method.kappa_align = 0.3, 0.7
    g = method.alpha_gradient(model, batch)
    block = full_hvp_first_block(model, batch, 0.3, 0.7)
    assert float(block.abs().max()) > 0
    torch.testing.assert_close(g, block.mean(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("M", [2, 3])
def test_alpha_grad_agrees_with_finite_differences_of_the_gradient_in_float64(M):
    # An independent check of the double backward: (∇L_tot(θ + εv) − ∇L_tot(θ − εv)) / 2ε
    # with v = g_cls, on a smooth (tanh) model in float64.
    trainer, method = make_trainer(M, model_spec=TANH)
    model = trainer.model.double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in first_samples(M, 8).items()}
    method.kappa_cls, method.kappa_align = 0.4, 0.6
    g = method.alpha_gradient(model, batch)
    params = list(model.parameters())
    model.eval()
    ce, _, _ = reference_objective(model, batch, 0.4, 0.6)
    v = torch.autograd.grad(ce, params)
    eps = 1e-6

    def first_gradient(sign: float) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(sign * eps * d)
        _, _, total = reference_objective(model, batch, 0.4, 0.6)
        grad = torch.autograd.grad(total, params[0])[0]
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(sign * eps * d)
        return grad

    fd = (first_gradient(1.0) - first_gradient(-1.0)) / (2 * eps)
    model.train()
    torch.testing.assert_close(g.double(), fd.mean(), rtol=1e-4, atol=1e-10)


@SETTINGS
@given(M=st.sampled_from([2, 3]), lr_exp=st.floats(-4.0, 4.0), init=st.floats(0.05, 0.95),
       epoch=st.integers(1, 19))
def test_the_learnable_update_is_a_clipped_step_and_the_weights_sum_to_one(M, lr_exp, init, epoch):
    lr = 10.0 ** lr_exp
    trainer, method = make_trainer(M, lr_alpha=lr, kappa_align_init=init)
    g = float(method.alpha_gradient(trainer.model, first_samples(M, 8)))  # with κ before the step
    method.on_epoch_start(trainer, epoch)
    assert method.kappa_align == min(max(init - lr * g, 0.05), 0.95)
    assert 0.05 <= method.kappa_align <= 0.95
    assert method.kappa_cls == 1.0 - method.kappa_align
    assert method.kappa_cls + method.kappa_align == pytest.approx(1.0, abs=1e-15)
    logged = method.log.flush()
    assert logged["alpha_grad"] == pytest.approx(g, rel=1e-6, abs=1e-12)
    assert (logged["lr_alpha"], logged["kappa_align"], logged["kappa_cls"]) == \
        (lr, method.kappa_align, method.kappa_cls)


@pytest.mark.parametrize("g,expected", [(1.0, 0.05), (-1.0, 0.95), (0.0, 0.5)])
def test_a_large_step_is_clipped_at_either_end(g, expected):
    trainer, method = make_trainer(2, lr_alpha=1e6, kappa_align_init=0.5)
    method.alpha_gradient = lambda model, batch: torch.tensor(g)
    method.on_epoch_start(trainer, 1)
    assert method.kappa_align == expected
    assert method.kappa_cls == 1.0 - expected


def test_the_step_size_halves_at_active_epochs_that_are_positive_multiples_of_20():
    trainer, method = make_trainer(2, lr_alpha=0.08)
    seen = {}
    for epoch in (0, 1, 19, 20, 21, 39, 40, 60, 61):
        method.on_epoch_start(trainer, epoch)
        seen[epoch] = method.log.flush()["lr_alpha"]
    assert seen == {0: 0.08, 1: 0.08, 19: 0.08, 20: 0.04, 21: 0.04, 39: 0.04, 40: 0.02,
                    60: 0.01, 61: 0.01}
    assert method.lr_alpha == 0.01
    method.on_epoch_start(trainer, 81)  # outside the window (end = 80): no halving, no update
    assert method.lr_alpha == 0.01 and method.log.flush() == {}


@pytest.mark.parametrize("M", [2, 3])
def test_the_update_reads_only_the_first_validation_samples(M):
    info, batch = INFOS[M], BATCHES[M]
    val = Recording(batch, info.modalities)
    train = Recording(batch, info.modalities, refuse=True)
    trainer, method = make_trainer(M, val=val, train=train, alpha_samples=5)
    expected = method.alpha_gradient(trainer.model, first_samples(M, 5))
    method.on_epoch_start(trainer, 0)
    assert val.read == [0, 1, 2, 3, 4]
    assert method.log.flush()["alpha_grad"] == pytest.approx(float(expected), rel=1e-6)
    val.read.clear()
    method.on_epoch_start(trainer, 1)
    assert val.read == [0, 1, 2, 3, 4]  # the same V_α every epoch
    small = Recording(first_samples(M, 3), info.modalities)
    trainer, method = make_trainer(M, val=small, train=train)  # alpha_samples = 8 > 3
    method.on_epoch_start(trainer, 0)
    assert small.read == [0, 1, 2]


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_the_update_changes_no_parameter_buffer_or_gradient_and_restores_the_mode(M, training):
    # Pitfall: the released trainer computes the update in train mode (on test samples),
    # writing their statistics into batch norm. Here: eval mode, validation samples.
    info = INFOS[M]
    model = bn_model(info)
    trainer, method = make_trainer(M, model=model, lr_alpha=10.0, kappa_align_init=0.5)
    params = list(model.parameters())
    params[1].grad = torch.full_like(params[1], 0.5)  # a gradient left by the previous step
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.on_epoch_start(trainer, 0)
    assert model.training is training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # parameters and BN buffers, bit for bit
    assert params[0].grad is None
    assert torch.equal(params[1].grad, torch.full_like(params[1], 0.5))
    assert all(p.grad is None for p in params[2:])
    assert method.kappa_align != 0.5  # the update did run


@pytest.mark.parametrize("M", [2, 3])
def test_the_update_is_computed_in_eval_mode(M):
    model = bn_model(INFOS[M])
    trainer, method = make_trainer(M, model=model)
    batch = first_samples(M, 8)
    g = method.alpha_gradient(model, batch)
    kc, ka = method.kappa_cls, method.kappa_align
    torch.testing.assert_close(g, full_hvp_first_block(model, batch, kc, ka).mean(),
                               rtol=1e-4, atol=1e-9)
    params = list(model.parameters())  # the same product with batch statistics (train mode)
    ce, _, total = reference_objective(model, batch, kc, ka)
    g_tot = torch.autograd.grad(total, params, create_graph=True)
    g_cls = torch.autograd.grad(ce, params, retain_graph=True)
    train_mode = torch.autograd.grad(g_tot, params[0], grad_outputs=g_cls)[0].mean()
    assert abs(float(train_mode - g)) > 1e-3 * abs(float(g)) + 1e-9


def test_an_empty_validation_split_is_refused_with_the_reason():
    empty = TensorMultimodalDataset({m: BATCHES[2][m][:0] for m in INFOS[2].modalities},
                                    BATCHES[2]["label"][:0])
    trainer, method = make_trainer(2, val=empty)
    with pytest.raises(ValueError, match="validation split is empty"):
        method.on_epoch_start(trainer, 0)


# -- state (§1.12) --------------------------------------------------------------------------

def test_the_weights_and_step_size_survive_a_checkpoint_round_trip(tmp_path: Path):
    trainer, method = make_trainer(3, lr_alpha=0.4)
    for epoch in (0, 20):
        method.on_epoch_start(trainer, epoch)
    method.log.flush()
    path = tmp_path / "state.pt"
    torch.save({"method": method.state_dict()}, path)
    fresh = make_method(INFOS[3], lr_alpha=0.4)
    fresh.load_state_dict(torch.load(path, weights_only=True)["method"])
    assert (fresh.kappa_cls, fresh.kappa_align, fresh.lr_alpha) == \
        (method.kappa_cls, method.kappa_align, method.lr_alpha) != (0.05, 0.95, 0.4)
    assert fresh.lr_alpha == 0.2
    method.on_epoch_start(trainer, 40)
    fresh.on_epoch_start(trainer, 40)
    assert method.log.flush() == fresh.log.flush()


def test_an_interrupted_run_resumed_ends_like_the_uninterrupted_one(tmp_path: Path):
    fast = {**FAST, "epochs": 3, "lr_alpha": 100.0, "kappa_align_init": 0.5,
            "output_root": str(tmp_path)}
    whole = bbench.run("LFM", "mfeat", **fast)
    kappas = [h["method"]["kappa_align"] for h in whole.history]
    assert len(set(kappas)) == 3 and all(0.05 < k < 0.95 for k in kappas)  # κ moves every epoch
    resumed = interrupted_and_resumed("LFM", "mfeat", 1, **fast)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.metrics["train_flops"] == whole.metrics["train_flops"]


# -- end to end -----------------------------------------------------------------------------

def test_the_command_line_run_writes_a_record_with_the_method_log(tmp_path: Path):
    out = tmp_path / "lfm"
    assert main(["run", "--method", "LFM", "--dataset", "mfeat", "--out", str(out), "--epochs", "2",
                 "--set", "dataset.options.subsample_per_class=20", "--quiet"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["spec"]["method"] == "LFM"
    assert record["metrics"]["train_flops_by_region"]["epoch_start"] > 0  # the HVP, counted
    lr = 1e-4
    for h in record["history"]:
        logged = h["method"]
        assert set(logged) == {"active", "align_loss", "alpha_grad", "lr_alpha", "kappa_cls",
                               "kappa_align"}
        assert logged["active"] == 1.0 and logged["lr_alpha"] == lr
        assert logged["align_loss"] >= 0 and math.isfinite(logged["alpha_grad"])
        assert 0.05 <= logged["kappa_align"] <= 0.95
        assert logged["kappa_cls"] + logged["kappa_align"] == pytest.approx(1.0, abs=1e-12)


def test_the_fitted_schedule_end_to_end_with_three_modalities(tmp_path: Path):
    result = bbench.run("LFM", "mfeat-fac-fou-mor", schedule="fitted", start=1,
                        output_root=str(tmp_path), **{**FAST, "epochs": 3})
    assert [h["method"].get("kappa_cls") for h in result.history] == \
        [None, fitted_kappa_cls(1), fitted_kappa_cls(2)]
    assert result.history[0]["method"] == {"active": 0.0}
    for h in result.history[1:]:
        assert set(h["method"]) == {"active", "align_loss", "kappa_cls", "kappa_align"}
        assert h["method"]["kappa_cls"] + h["method"]["kappa_align"] == pytest.approx(1.0)
    assert result.metrics["train_flops_by_region"]["epoch_start"] == 0  # no update computed


# -- training FLOPs (the style of test_method_flops.py) ---------------------------------------

@pytest.mark.slow
def test_training_flops_exceed_baselines_by_the_unimodal_heads_and_the_hvp(tmp_path: Path):
    blocks = Blocks()
    base = bbench.run("Baseline", "mfeat", output_root=str(tmp_path / "base"), **BUDGET).metrics
    lfm = bbench.run("LFM", "mfeat", output_root=str(tmp_path / "lfm"), **BUDGET).metrics
    signature = bbench.run("LFM", "mfeat", output_root=str(tmp_path / "signature"),
                           **{**BUDGET, "train.flops": "signature"}).metrics
    spec = resolve_spec("LFM", "mfeat", {"dataset.options": BUDGET["dataset.options"]})
    torch.manual_seed(0)
    model = build_multimodal_model(blocks.data.info, spec.model)
    batch = next(iter(eval_loader(blocks.data.val, BATCH, blocks.data.collate)))
    features = [model.encoders[m](batch[m]).detach() for m in blocks.modalities]
    live = [f.clone().requires_grad_(True) for f in features]
    # Per step, beyond Baseline's F + Bw: the M unimodal logits z_m = W_m h_m + b/M of the
    # alignment term, forward and backward (the softmaxes, KLs and logs are element-wise: 0).
    uni_fwd = sum(count_forward_flops(model.head.unimodal, features, i)
                  for i in range(blocks.M)) / BATCH
    uni_bwd = sum(backward_flops(lambda i=i: model.head.unimodal(live, i))
                  for i in range(blocks.M)) / BATCH
    assert uni_fwd == pytest.approx(blocks.head_fwd) and uni_bwd == pytest.approx(blocks.head_bwd)
    # At each active epoch's start, on the n = alpha_samples first validation samples: one
    # forward with the unimodal logits, g_tot (backward through both paths, graph kept),
    # g_cls (backward through the fused path), then the double backward of the first tensor's
    # block of the Hessian-vector product, measured here as a building block of its own.
    n = min(8, blocks.n_val)
    v_alpha = {k: v[:n] for k, v in batch.items()}
    params = list(model.parameters())
    model.eval()
    feats = model.encode(v_alpha)
    logits = model.fuse(feats)
    ce = F.cross_entropy(logits, v_alpha["label"])
    total = 0.05 * ce + 0.95 * alignment([model.unimodal_logits(feats, i) for i in range(blocks.M)])
    g_tot = torch.autograd.grad(total, params, create_graph=True)
    g_cls = torch.autograd.grad(ce, params, retain_graph=True)
    hvp_block = count_forward_flops(torch.autograd.grad, g_tot, params[0], grad_outputs=g_cls,
                                    retain_graph=True)
    hvp_full = count_forward_flops(torch.autograd.grad, g_tot, params, grad_outputs=g_cls)
    assert 0 < hvp_block < hvp_full  # only the block g_α reads is computed
    update = n * (blocks.F + uni_fwd + blocks.Bw + uni_bwd + blocks.Bw) + hvp_block
    regions = lfm["train_flops_by_region"]
    assert regions["epoch_start"] == pytest.approx(EPOCHS * update, rel=1e-9)
    assert regions["step"] == pytest.approx(
        EPOCHS * blocks.pass_samples * (blocks.step() + uni_fwd + uni_bwd), rel=1e-9)
    # The hook is counted in full when steps are counted once per signature.
    assert signature["train_flops_by_region"]["epoch_start"] == regions["epoch_start"]
    predicted = EPOCHS * blocks.pass_samples * (blocks.step() + uni_fwd + uni_bwd) + EPOCHS * update
    check(lfm, base, predicted, "LFM")
    assert lfm["train_flops"] - base["train_flops"] == pytest.approx(
        EPOCHS * blocks.pass_samples * (uni_fwd + uni_bwd) + EPOCHS * update, rel=1e-9)
