"""GBlending (methods.md §6.6): the properties a correct implementation satisfies, its
pitfalls, the copy-training helper's options it relies on, its cost and its resume."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import bbench
import bbench.methods.gblending as gblending_module
from bbench.cli import main
from bbench.config.fields import SpecError
from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, RunSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.copies import fit_copy
from bbench.engine.flops import count_forward_flops
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.gblending import GBlending, HeadFit, blend_weights, head_logits
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.models.multimodal import build_multimodal_model
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed
from tests.unit.test_method_flops import BATCH, BUDGET, EPOCHS, Blocks, backward_flops, check

CPU = torch.device("cpu")
NAMES = ("a", "b", "c")
DIMS = (6, 4, 5)
K = 3
MFEAT = {"progress": False, "dataset.options": {"subsample_per_class": 20}}
MFEAT_M = {2: {}, 3: {"dataset.modalities": ("fac", "mor", "zer")}}


class Recording(TensorMultimodalDataset):
    """A split that records the sample indices of every batch read."""

    def __init__(self, batch: dict[str, torch.Tensor], modalities: tuple[str, ...]) -> None:
        super().__init__({m: batch[m] for m in modalities}, batch["label"])
        self.reads: list[list[int]] = []

    def __getitems__(self, indices):
        self.reads.append([int(i) for i in indices])
        return super().__getitems__(indices)


def make_trainer(M: int = 2, params: dict | None = None, *, n_train: int = 48, n_val: int = 20,
                 batch_size: int = 16, dropout: float = 0.0, bn: bool = False,
                 optimizer: OptimizerSpec | None = None) -> Trainer:
    """A GBlending trainer on random toy splits (the run spec carries the optimizer settings)."""
    info = toy_info(dims=DIMS[:M], num_classes=K, names=NAMES[:M])
    train = Recording(toy_batch(info, n=n_train, seed=0), info.modalities)
    val = Recording(toy_batch(info, n=n_val, seed=1), info.modalities)
    encoder = EncoderSpec("mlp", {"hidden": (16, 8), "dropout": dropout})
    model_spec = ModelSpec(encoders={"*": encoder})
    spec = TrainSpec(optimizer=optimizer or OptimizerSpec(lr=0.1), epochs=6,
                     batch_size=batch_size, progress=False)
    ctx = RunContext(info, model_spec, 0, CPU, RunSpec(model=model_spec, train=spec))
    method = build_method("GBlending", {"super_epoch": 2, **(params or {})}, ctx)
    torch.manual_seed(0)
    model = method.build_model()
    if bn:  # buffers (running statistics) and 1-D affine parameters inside encoder a
        model.encoders["a"].stages[0].append(nn.BatchNorm1d(16))
    return Trainer(spec, TrainingData(info, train, val), method, model, count_flops=False)


def train_a_little(trainer: Trainer, epoch: int = 0, steps: int = 2) -> None:
    """Optimizer steps from an estimated blend: momentum state and moved parameters."""
    loader = trainer.train_loader(trainer.data.train, epoch)
    for j, batch in zip(range(steps), loader):
        trainer.method.train_step(trainer, batch, StepInfo(epoch, j, len(loader), j))


def full_split_ce(model, dataset, head: int) -> float:
    """Mean CE of head k over a whole split in one batch (eval mode): the reference mean."""
    batch = dataset.__getitems__(list(range(len(dataset))))
    dataset.reads.pop()
    model.eval()
    with torch.no_grad():
        value = float(F.cross_entropy(head_logits(model, batch, head), batch["label"]))
    model.train()
    return value


# -- facts and hyper-parameters ----------------------------------------------------------------

def test_class_facts_defaults_and_validation():
    assert GBlending.family is Family.OBJECTIVE and GBlending.windowed
    assert GBlending.extra_passes and GBlending.min_modalities == 2
    info = toy_info()
    method = build_method("GBlending", {}, RunContext(info, ModelSpec(), 0, CPU))
    p = method.params
    assert (p.mode, p.super_epoch, p.start, p.end) == ("online", 10, 0, 80)  # BalanceMM defaults
    assert method.heads == ("a", "b", "fused")
    for bad in ({"super_epoch": 1}, {"mode": "sometimes"}, {"start": 5, "end": 4}):
        with pytest.raises(SpecError):
            build_method("GBlending", bad, RunContext(info, ModelSpec(), 0, CPU))


def test_a_modality_called_fused_is_refused_its_logs_would_collide():
    info = toy_info(names=("fused", "b"))
    with pytest.raises(SpecError, match="fused"):
        build_method("GBlending", {}, RunContext(info, ModelSpec(), 0, CPU))


# -- property 1: weights >= 0, summing to 1; uniform when every w̃ = 0 ---------------------------

def test_blend_weights_reference_values():
    # w̃ = max(G, 0)/(ΔO² + 1e-12) = (0.2/0.01, 0.1/0.01, 0) = (20, 10, 0)
    w = blend_weights([0.2, 0.1, -0.3], [0.1, -0.1, 0.5])
    torch.testing.assert_close(w, torch.tensor([2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    # M = 3: (1/1, 0.5/0.25, 0, 3/9) = (1, 2, 0, 1/3), Σ = 10/3
    w = blend_weights([1.0, 0.5, 0.0, 3.0], [1.0, 0.5, 2.0, -3.0])
    torch.testing.assert_close(w, torch.tensor([0.3, 0.6, 0.0, 0.1], dtype=torch.float64))
    # every w̃_k = 0 (no head generalised): uniform 1/(M + 1)
    assert blend_weights([0.0, -1.0, -0.5], [0.3, 0.0, 1.0]).tolist() == [1 / 3] * 3
    assert blend_weights([-1.0] * 4, [0.0] * 4).tolist() == [0.25] * 4
    # ΔO = 0: the 1e-12 guard keeps w̃ finite
    w = blend_weights([1e-3, 2e-3, 0.0], [0.0, 0.0, 0.0])
    torch.testing.assert_close(w, torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(M=st.sampled_from([2, 3]), data=st.data())
def test_blend_weights_are_non_negative_and_sum_to_one(M, data):
    loss = st.floats(-10, 10, allow_nan=False)
    G = data.draw(st.lists(loss, min_size=M + 1, max_size=M + 1))
    dO = data.draw(st.lists(loss, min_size=M + 1, max_size=M + 1))
    w = blend_weights(G, dO)
    assert w.shape == (M + 1,) and bool(torch.isfinite(w).all())
    assert bool((w >= 0).all())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    nobody = all(max(g, 0.0) / (o * o + 1e-12) == 0 for g, o in zip(G, dO))
    if nobody:
        assert w.tolist() == [1 / (M + 1)] * (M + 1)
    for k in range(M + 1):  # a head that did not generalise gets nothing, unless nobody did
        if G[k] <= 0 and not nobody:
            assert float(w[k]) == 0.0


def test_head_statistics_follow_the_formulas():
    fit = HeadFit(train_losses=(1.0, 0.4), val_losses=(1.2, 0.9))
    assert fit.generalisation == pytest.approx(0.3)   # L^V_1 − L^V_N
    assert fit.overfitting == pytest.approx(0.3)      # (0.9 − 0.4) − (1.2 − 1.0)


@pytest.mark.parametrize("M", [2, 3])
def test_an_estimation_gives_weights_from_the_heads_statistics_non_negative_summing_to_one(M):
    trainer = make_trainer(M)
    method = trainer.method
    method.on_epoch_start(trainer, 0)
    logged = method.log.flush()
    heads = method.heads
    G = [logged[f"G_{k}"] for k in heads]
    dO = [logged[f"dO_{k}"] for k in heads]
    w = method.weights
    assert w.shape == (M + 1,) and w.dtype == torch.float32
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(w, blend_weights(G, dO).float())
    assert [logged[f"w_{k}"] for k in heads] == w.tolist()


# -- property 1: estimation leaves the main run untouched ----------------------------------------

def snapshot(trainer: Trainer) -> dict:
    opt = trainer.optimizer.state_dict()
    return {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "grads": grads_of(trainer.model),
            "opt": {i: {k: v.clone() for k, v in s.items()} for i, s in opt["state"].items()},
            "groups": opt["param_groups"], "training": trainer.model.training}


@pytest.mark.parametrize("M", [2, 3])
def test_estimation_leaves_parameters_buffers_gradients_and_optimizer_state_bit_for_bit(M):
    trainer = make_trainer(M, bn=True)
    method = trainer.method
    method.on_epoch_start(trainer, 0)
    train_a_little(trainer)  # momentum buffers, moved weights, BN statistics, live .grad
    before = snapshot(trainer)
    assert before["opt"] and before["grads"]
    old_weights = method.weights.clone()
    method.on_epoch_start(trainer, 2)  # an estimation epoch (start + N)
    assert not torch.equal(method.weights, old_weights)  # it did estimate, from the moved model
    after = snapshot(trainer)
    for key, value in before["model"].items():
        assert torch.equal(value, after["model"][key]), key
    assert before["grads"].keys() == after["grads"].keys()
    for key, value in before["grads"].items():
        assert torch.equal(value, after["grads"][key]), key
    assert before["groups"] == after["groups"]
    for i, state in before["opt"].items():
        for k, v in state.items():
            assert torch.equal(v, after["opt"][i][k]), (i, k)
    assert before["training"] == after["training"]


def test_the_copy_trains_with_a_fresh_optimizer_from_the_run_settings_at_base_lr(monkeypatch):
    optimizer = OptimizerSpec(type="adam", lr=0.003, weight_decay=0.0)
    trainer = make_trainer(2, optimizer=optimizer)
    calls = []
    real = gblending_module.fit_copy

    def recording(module, batches, step_loss, score, epochs, opt, **kw):
        calls.append((module, opt, epochs, kw))  # the module itself: a freed copy's id is reused
        assert module is not trainer.model
        return real(module, batches, step_loss, score, epochs, opt, **kw)

    monkeypatch.setattr(gblending_module, "fit_copy", recording)
    trainer.method.on_epoch_start(trainer, 0)
    assert len(calls) == 3 and len({id(c[0]) for c in calls}) == 3  # one fresh copy per head
    for _, opt, epochs, kw in calls:
        assert opt == optimizer and epochs == 2
        assert kw["score_epochs"] == (0, 1) and kw["keep_best"] is False


def test_a_method_built_without_a_run_spec_refuses_to_guess_the_copy_optimizer():
    info = toy_info()
    method = build_method("GBlending", {}, RunContext(info, ModelSpec(), 0, CPU))
    with pytest.raises(SpecError, match="optimizer"):
        method.copy_optimizer()


@pytest.mark.parametrize("M", [2, 3])
def test_estimation_leaves_the_main_runs_random_stream_as_it_was(M, monkeypatch):
    trainer = make_trainer(M, dropout=0.5)  # the copies' dropout draws from the global RNG
    consumed = []
    real = gblending_module.set_rng_state

    def recording(state):
        consumed.append(not torch.equal(torch.get_rng_state(), state["torch"]))
        real(state)

    monkeypatch.setattr(gblending_module, "set_rng_state", recording)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    trainer.method.on_epoch_start(trainer, 0)
    assert consumed == [True]  # the copies did draw from the global generator ...
    assert torch.equal(torch.rand(4), expected[0])  # ... and the main run's stream is unchanged
    assert (random.random(), np.random.rand()) == expected[1:]


def test_the_copies_loader_neither_coincides_with_nor_advances_the_main_runs():
    trainer = make_trainer(2)
    train = trainer.data.train
    main_order = [b["index"].tolist() for b in trainer.train_loader(train, 0)]
    train.reads.clear()
    trainer.method.on_epoch_start(trainer, 0)
    n_b = len(main_order)
    per_head = [train.reads[i * 2 * n_b:(i + 1) * 2 * n_b] for i in range(3)]
    assert len(train.reads) == 3 * 2 * n_b  # (M + 1) copies x N epochs x n_b batches
    assert per_head[0] == per_head[1] == per_head[2]  # the heads see the same batches
    assert per_head[0][:n_b] != main_order  # not the main run's order of this epoch
    assert per_head[0][:n_b] != per_head[0][n_b:]  # a new order each copy epoch
    assert [b["index"].tolist() for b in trainer.train_loader(train, 0)] == main_order
    # the order comes from the method generator: the next estimation shuffles differently
    train.reads.clear()
    trainer.method.on_epoch_start(trainer, 2)
    assert train.reads[:n_b] != per_head[0][:n_b]


def test_an_estimation_that_cannot_train_or_reaches_a_non_finite_loss_says_so():
    with pytest.raises(ValueError, match="fewer than one batch"):
        tiny = make_trainer(2, n_train=8, batch_size=16)
        tiny.method.on_epoch_start(tiny, 0)
    broken = make_trainer(2)
    broken.data.val.features["a"][3] = float("nan")
    with pytest.raises(FloatingPointError, match="head.s. a, fused"):
        broken.method.on_epoch_start(broken, 0)
    assert broken.method.weights is None


# -- property 2: the loss is Σ_k w_k CE_k; one-hot on the fused head is Baseline -----------------

@settings(max_examples=15, deadline=None)
@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 10_000))
def test_the_loss_is_the_weighted_sum_of_the_heads_cross_entropies(M, seed):
    g = torch.Generator().manual_seed(seed)
    trainer = make_trainer(M)
    method = trainer.method
    method.weights = torch.rand(M + 1, generator=g).softmax(0)
    batch = toy_batch(trainer.data.info, n=12, seed=seed)
    out = method.forward(trainer.model, batch, StepInfo(0, 0, 1, 0))
    loss = method.loss(out, batch, StepInfo(0, 0, 1, 0))
    labels = batch["label"]
    features = trainer.model.encode(batch)
    heads = [trainer.model.unimodal_logits(features, i) for i in range(M)]
    heads.append(trainer.model.fuse(features))
    expected = sum(float(w) * F.cross_entropy(z, labels) for w, z in zip(method.weights, heads))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    loss.backward()  # the loss accessor: every encoder and the head get a gradient
    assert all(p.grad is not None for p in trainer.model.parameters())


@pytest.mark.parametrize("M", [2, 3])
def test_weights_one_hot_on_the_fused_head_give_the_baseline_loss_and_gradients(M):
    info = toy_info(dims=DIMS[:M], num_classes=K, names=NAMES[:M])
    batch = toy_batch(info, n=16)
    base, base_out = one_step("Baseline", {}, info, batch)
    method = build_method("GBlending", {}, RunContext(info, ModelSpec(), 0, CPU))
    method.weights = torch.tensor([0.0] * M + [1.0])
    torch.manual_seed(0)  # one_step's initialisation
    model = method.build_model()
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    spec = TrainSpec(optimizer=OptimizerSpec(lr=0.1), epochs=1, progress=False)
    trainer = Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False)
    out = method.train_step(trainer, batch, StepInfo(1, 0, 1, 0))  # epoch 1: no estimation
    assert torch.equal(out.loss, base_out.loss)
    mine, theirs = grads_of(trainer.model), grads_of(base.model)
    assert mine.keys() == theirs.keys()
    for name, grad in theirs.items():
        assert torch.equal(mine[name], grad), name


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_the_step_is_baselines_and_nothing_is_estimated(M):
    info = toy_info(dims=DIMS[:M], num_classes=K, names=NAMES[:M])
    batch = toy_batch(info, n=16)
    base, base_out = one_step("Baseline", {}, info, batch)
    mine, out = one_step("GBlending", {"start": 1}, info, batch, epoch=0)  # no run spec needed
    assert mine.method.weights is None and not mine.method.log.flush()
    assert torch.equal(out.loss, base_out.loss)
    for name, grad in grads_of(base.model).items():
        assert torch.equal(grads_of(mine.model)[name], grad), name


def test_an_active_step_without_weights_is_an_error_not_a_silent_default():
    trainer = make_trainer(2)
    with pytest.raises(RuntimeError, match="no blending weights"):
        train_a_little(trainer, steps=1)


# -- property 3: estimation exactly at start, start + N, ... (online) or at start (offline) -----

@pytest.mark.parametrize("params,expected", [
    ({"super_epoch": 2}, [0, 2, 4, 6, 8]),
    ({"super_epoch": 3, "start": 1}, [1, 4, 7]),
    ({"super_epoch": 2, "start": 1, "end": 5}, [1, 3, 5]),
    ({"super_epoch": 4, "start": 2, "end": 5}, [2]),
    ({"super_epoch": 2, "mode": "offline"}, [0]),
    ({"super_epoch": 2, "mode": "offline", "start": 3}, [3]),
])
def test_estimation_epochs(params, expected):
    method = build_method("GBlending", params, RunContext(toy_info(), ModelSpec(), 0, CPU))
    assert [e for e in range(10) if method.is_estimation_epoch(e)] == expected


def estimation_epochs(result) -> list[int]:
    return [h["epoch"] for h in result.history if "G_fused" in h["method"]]


@pytest.mark.slow
@pytest.mark.parametrize("M,epochs,params,expected", [  # M = 2 online: the command-line test
    (3, 3, {"super_epoch": 2}, [0, 2]),
    (2, 3, {"super_epoch": 2, "mode": "offline"}, [0]),
    (3, 4, {"super_epoch": 2, "start": 1}, [1, 3]),
])
def test_a_run_estimates_exactly_at_the_expected_epochs(tmp_path, M, epochs, params, expected):
    result = bbench.run("GBlending", "mfeat", epochs=epochs, output_root=str(tmp_path), **params,
                        **MFEAT, **MFEAT_M[M])
    assert estimation_epochs(result) == expected
    modalities = ("fac", "mor", "zer")[:M]  # mfeat's default views, then the one added
    assert {k[len("acc_"):] for k in result.metrics if k.startswith("acc_")} == set(modalities)
    for h in result.history:
        logged = h["method"]
        estimated = h["epoch"] in expected
        for k in (*modalities, "fused"):
            assert (f"G_{k}" in logged) == estimated and (f"dO_{k}" in logged) == estimated
            assert (f"w_{k}" in logged) == (h["epoch"] >= expected[0])
        if h["epoch"] >= expected[0]:
            w = [logged[f"w_{k}"] for k in (*modalities, "fused")]
            assert min(w) >= 0 and sum(w) == pytest.approx(1.0, abs=1e-6)
        if estimated:  # the weights logged are the ones this epoch's statistics give
            G = [logged[f"G_{k}"] for k in (*modalities, "fused")]
            dO = [logged[f"dO_{k}"] for k in (*modalities, "fused")]
            assert w == pytest.approx(blend_weights(G, dO).tolist(), rel=1e-6)
        elif h["epoch"] > expected[0]:  # kept from the last estimation
            previous = result.history[h["epoch"] - 1]["method"]
            assert w == [previous[f"w_{k}"] for k in (*modalities, "fused")]


# -- pitfall 1: losses averaged over samples, not summed over batches ----------------------------

def test_fit_copy_reports_the_sample_weighted_mean_training_loss_of_each_epoch():
    x = torch.arange(10.0)[:, None]
    batches = [x[:4], x[4:9], x[9:]]  # 4, 5 and 1 samples
    module = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(1.0)
    fitted = fit_copy(module, lambda epoch: batches, lambda m, b: m(b).mean(), lambda m: 0.0, 2,
                      OptimizerSpec(lr=1e-30, momentum=0.0, weight_decay=0.0),
                      samples=lambda b: b.shape[0], keep_best=False)
    # the loss of a batch is its mean of x; the epoch's is the mean of x over the 10 samples
    assert fitted.train_losses == [pytest.approx(4.5)] * 2
    per_batch_sum = sum(float(b.mean()) for b in batches)
    assert per_batch_sum != pytest.approx(4.5)  # what summing over batches would have given


@pytest.mark.parametrize("M", [2, 3])
def test_the_copies_losses_are_means_over_samples_whatever_the_split_and_batch_sizes(M):
    # A learning rate too small to move a weight: each copy stays the model, so L^T_j and
    # L^V_j must be the model's mean CE over the training and validation splits. Train has
    # 3 batches of 16, validation 1 batch of 20: sums over batches would be 3x and 1x the
    # means, and the overfitting term would measure the split sizes.
    trainer = make_trainer(M, n_train=48, n_val=20,
                           optimizer=OptimizerSpec(lr=1e-30, momentum=0.0, weight_decay=0.0))
    fits = trainer.method.estimate(trainer, 0)
    for k, fit in enumerate(fits):
        train_mean = full_split_ce(trainer.model, trainer.data.train, k)
        val_mean = full_split_ce(trainer.model, trainer.data.val, k)
        assert fit.train_losses == (pytest.approx(train_mean, rel=1e-5),) * 2
        assert fit.val_losses == (pytest.approx(val_mean, rel=1e-5),) * 2
        assert fit.generalisation == pytest.approx(0.0, abs=1e-6)
    # no head generalised: every w̃ = 0, so the weights are uniform
    trainer.method.on_epoch_start(trainer, 0)
    assert trainer.method.weights.tolist() == pytest.approx([1 / (M + 1)] * (M + 1))


def test_the_validation_loss_does_not_depend_on_the_evaluation_batch_size():
    small, large = make_trainer(2, batch_size=3), make_trainer(2, batch_size=64)
    for k in range(3):
        a = small.method.validation_loss(small, small.model, k)
        b = large.method.validation_loss(large, large.model, k)
        assert a == pytest.approx(b, rel=1e-6)
        assert a == pytest.approx(full_split_ce(small.model, small.data.val, k), rel=1e-6)


# -- pitfall 2: the held-out loss is the validation split's, never the test split's -------------

def test_the_held_out_loss_is_read_from_the_validation_split_only():
    trainer = make_trainer(2)
    train, val = trainer.data.train, trainer.data.val
    assert not hasattr(trainer.data, "test")  # the loop a hook sees has no test split
    one_pass = [b["index"].tolist() for b in trainer.eval_loader(val)]
    val.reads.clear()
    fits = trainer.method.estimate(trainer, 0)
    # N = 2 epochs scored at epochs 1 and N: two in-order passes over validation per head
    assert val.reads == one_pass * (2 * 3)
    assert all(len(r) == trainer.spec.batch_size for r in train.reads)  # training batches only
    # and the recorded L^V is that split's loss: another validation split gives another one
    other = make_trainer(2)
    other.data.val = Recording(toy_batch(other.data.info, n=20, seed=7), other.data.info.modalities)
    assert other.method.estimate(other, 0)[0].val_losses != fits[0].val_losses


def test_in_a_run_every_estimation_pass_over_held_out_data_reads_the_validation_split(
        tmp_path, monkeypatch):
    read, data = [], []
    real = Trainer.eval_loader

    def recording(self, dataset):
        read.append(dataset)
        data.append(self.data)
        return real(self, dataset)

    monkeypatch.setattr(Trainer, "eval_loader", recording)
    bbench.run("GBlending", "mfeat", epochs=1, super_epoch=2, output_root=str(tmp_path), **MFEAT)
    assert len(read) == 2 * 3  # 2 passes per head (the loop validates with a loader it keeps)
    assert all(d is data[0].val for d in read)


# -- cost ---------------------------------------------------------------------------------------

def test_the_estimation_counts_as_training_time(tmp_path, monkeypatch):
    real = GBlending.estimate

    def slow(self, loop, epoch):
        time.sleep(0.5)
        return real(self, loop, epoch)

    monkeypatch.setattr(GBlending, "estimate", slow)
    result = bbench.run("GBlending", "mfeat", epochs=1, super_epoch=2, output_root=str(tmp_path),
                        **MFEAT)
    assert result.metrics["train_seconds"] >= 0.5


@pytest.mark.slow
def test_training_flops_include_the_copy_training_as_the_pass_structure_predicts(tmp_path):
    """(M + 1) copies x N epochs of training steps plus 2 validation passes each, at the first
    epoch only (N = 2, 2 epochs); every active step adds the M split-head logits."""
    blocks = Blocks()
    N = 2
    root = tmp_path / "flops"
    base = bbench.run("Baseline", "mfeat", output_root=str(root), **BUDGET).metrics
    mine = bbench.run("GBlending", "mfeat", output_root=str(root), super_epoch=N, **BUDGET).metrics
    # Split-head z_i = h_i W_i^T + b/M: forward, and backward into W_i and h_i, per sample.
    torch.manual_seed(0)
    model = build_multimodal_model(blocks.data.info, ModelSpec())
    batch = next(iter(torch.utils.data.DataLoader(blocks.data.val, batch_size=BATCH,
                                                  collate_fn=blocks.data.collate)))
    features = [model.encoders[m](batch[m]).detach() for m in blocks.modalities]
    live = [f.clone().requires_grad_(True) for f in features]
    uni_fwd = [count_forward_flops(model.head.unimodal, features, i) / BATCH
               for i in range(blocks.M)]
    uni_bwd = [backward_flops(lambda i=i: model.head.unimodal(live, i)) / BATCH
               for i in range(blocks.M)]
    assert all(f > 0 for f in uni_fwd) and all(b > 0 for b in uni_bwd)
    main = EPOCHS * blocks.pass_samples * (blocks.step() + sum(uni_fwd) + sum(uni_bwd))
    copies = N * blocks.pass_samples * blocks.step() + 2 * blocks.n_val * blocks.F  # fused head
    for i, m in enumerate(blocks.modalities):  # unimodal head i: encoder i and W_i only
        copies += N * blocks.pass_samples * (blocks.enc_fwd[m] + uni_fwd[i]
                                             + blocks.enc_bwd[m] + uni_bwd[i])
        copies += 2 * blocks.n_val * (blocks.enc_fwd[m] + uni_fwd[i])
    regions = mine["train_flops_by_region"]
    assert regions["epoch_start"] == pytest.approx(copies, rel=1e-9)
    assert regions["step"] == pytest.approx(main, rel=1e-9)
    check(mine, base, main + copies, "GBlending")
    # The rough §2 count, (M + 1)·N·(F + Bw) per training sample, over-predicts: a unimodal
    # copy runs one encoder, not all of them.
    rough = (blocks.M + 1) * N * blocks.pass_samples * blocks.step()
    assert copies < rough


# -- end to end: the command line, and resume ---------------------------------------------------

@pytest.mark.slow
def test_the_command_line_run_writes_a_record_with_the_method_log(tmp_path: Path):
    out = tmp_path / "gb"
    assert main(["run", "--method", "GBlending", "--dataset", "mfeat", "--out", str(out),
                 "--epochs", "3", "--super_epoch", "2",
                 "--set", "dataset.options.subsample_per_class=20", "--quiet"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["spec"]["method_params"] == {"start": 0, "end": 80, "mode": "online",
                                               "super_epoch": 2}
    heads = ("fac", "mor", "fused")
    logs = [h["method"] for h in record["history"]]
    assert [set(log) for log in logs] == [
        {"active", *(f"{q}_{k}" for q in ("w", "G", "dO") for k in heads)},
        {"active", *(f"w_{k}" for k in heads)},
        {"active", *(f"{q}_{k}" for q in ("w", "G", "dO") for k in heads)}]
    assert all(log["active"] == 1.0 for log in logs)
    assert record["metrics"]["train_flops_by_region"]["epoch_start"] > 0


@pytest.mark.slow
def test_an_interrupted_run_resumed_ends_like_the_uninterrupted_one(tmp_path):
    # Interrupted after epoch 0: epoch 1 trains with the checkpointed weights, epoch 2
    # re-estimates with the checkpointed method generator.
    fast = {"epochs": 3, "super_epoch": 2, "output_root": str(tmp_path), **MFEAT}
    whole = bbench.run("GBlending", "mfeat", **fast)
    resumed = interrupted_and_resumed("GBlending", "mfeat", 0, **fast)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    for key in ("acc", "f1", "best_epoch", "train_flops"):
        assert resumed.metrics[key] == whole.metrics[key], key


def test_the_weights_survive_a_state_round_trip():
    trainer = make_trainer(3)
    trainer.method.on_epoch_start(trainer, 0)
    state = trainer.method.state_dict()
    fresh = make_trainer(3)
    assert fresh.method.weights is None
    fresh.method.load_state_dict(state)
    assert torch.equal(fresh.method.weights, trainer.method.weights)
    assert torch.equal(fresh.method.generator.get_state(), trainer.method.generator.get_state())
    empty = make_trainer(3)
    empty.method.load_state_dict(make_trainer(3).method.state_dict())
    assert empty.method.weights is None
    with pytest.raises(ValueError, match="4 heads"):
        make_trainer(3).method.load_state_dict({**state, "extra": {"weights": torch.ones(3)}})


# -- fit_copy's options (the copy-training helper GBlending shares with LinearProbe) -------------

def test_fit_copy_scores_only_the_requested_epochs_and_can_end_on_the_last_epoch():
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    module = nn.Linear(2, 2)
    epochs_run, scored = [], []

    def score(m):
        scored.append(m.training)
        return float(-F.cross_entropy(m(x), y))

    def batches(epoch):
        epochs_run.append(epoch)
        return [(x, y)]

    fitted = fit_copy(module, batches, lambda m, xy: F.cross_entropy(m(xy[0]), xy[1]), score, 4,
                      OptimizerSpec(lr=0.5, momentum=0.0, weight_decay=0.0),
                      score_epochs=(0, 3), keep_best=False)
    assert fitted.scored_epochs == [0, 3] and len(fitted.scores) == 2 and scored == [False] * 2
    assert epochs_run == [0, 1, 2, 3] and fitted.train_losses == []
    with torch.no_grad():
        assert fitted.scores[-1] == pytest.approx(score(module))  # the last epoch's weights kept
    with pytest.raises(ValueError, match="scored epoch"):
        fit_copy(module, batches, lambda m, xy: F.cross_entropy(m(xy[0]), xy[1]), score, 2,
                 OptimizerSpec(), score_epochs=())
