"""ReLearning (methods.md §7.4): purity diagnosis on train and validation, soft re-initialising."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import bbench
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.methods.relearning import (ReLearning, kmeans_purity, minmax_scale, purity,
                                       relearn_alpha, soft_reinit_)
from bbench.results.record import RunResult
from bbench.testing.resume import interrupted_and_resumed
from bbench.testing.methods import toy_batch, toy_info

NAMES = ("a", "b", "c")
DIMS = (6, 4, 5)
K = 3


class Recording(TensorMultimodalDataset):
    """A split that records every read (and can refuse them)."""

    def __init__(self, batch, n_modalities, refuse=False):
        super().__init__({m: batch[m] for m in NAMES[:n_modalities]}, batch["label"])
        self.reads = 0
        self.refuse = refuse

    def _read(self):
        if self.refuse:
            raise AssertionError("this split must not be read")
        self.reads += 1

    def __getitem__(self, i):
        self._read()
        return super().__getitem__(i)

    def __getitems__(self, indices):
        self._read()
        return super().__getitems__(indices)


def split(info, n, seed, M):
    return Recording(toy_batch(info, n=n, seed=seed), M)


def make_trainer(M=2, params=None, bn=False, same_splits=False, n_train=60, n_val=30):
    """A ReLearning trainer on random toy splits; `on_fit_start` has taken θ₀."""
    info = toy_info(dims=DIMS[:M], num_classes=K, names=NAMES[:M])
    train, train_eval = split(info, n_train, 0, M), split(info, n_train, 0, M)
    val = train_eval if same_splits else split(info, n_val, 1, M)
    method = build_method("ReLearning", {"reinit_epoch": 1, **(params or {})},
                          RunContext(info, ModelSpec(), 0, torch.device("cpu")))
    torch.manual_seed(0)
    model = method.build_model()
    if bn:  # a 1-D affine parameter pair and running-statistic buffers inside encoder a
        model.encoders["a"].stages[0].append(nn.BatchNorm1d(128))
    spec = TrainSpec(optimizer=OptimizerSpec(lr=0.1), epochs=3, batch_size=16, progress=False)
    trainer = Trainer(spec, TrainingData(info, train, val, train_eval=train_eval), method, model,
                      count_flops=False)
    method.on_fit_start(trainer)
    return trainer


def train_a_little(trainer, steps=4):
    """Optimizer steps (momentum state, moved parameters, BN statistics) away from θ₀."""
    loader = trainer.train_loader(trainer.data.train, epoch=0)
    for j, batch in zip(range(steps), loader):
        trainer.method.train_step(trainer, batch, StepInfo(0, j, len(loader), j))


def snapshot(trainer):
    model = trainer.model
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: b.detach().clone() for n, b in model.named_buffers()},
            copy.deepcopy(trainer.optimizer.state_dict()))


def assert_same(a, b, where="state"):
    """Nested dicts/lists of tensors and plain values, compared bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# -- the coefficient -------------------------------------------------------------------------

def test_reference_coefficient():
    assert relearn_alpha(0.1, 3.0) == pytest.approx(0.291313, abs=1e-6)
    assert relearn_alpha(0.0, 3.0) == 0.0
    assert relearn_alpha(0.4, 0.0) == 0.0


@given(st.floats(0, 1), st.floats(0, 1e9))
@settings(max_examples=200)
def test_alpha_lies_in_zero_one(gap, lam):
    alpha = relearn_alpha(gap, lam)
    assert 0 <= alpha < 1
    assert (alpha == 0) == (gap * lam == 0)


# -- purity and scaling ----------------------------------------------------------------------

def test_purity_on_a_hand_example():
    # cluster 0 = {1, 1, 0} → 2; cluster 1 = {2, 2} → 2; cluster 2 = {2} → 1: purity 5/6
    assert purity([0, 0, 0, 1, 1, 2], [1, 1, 0, 2, 2, 2]) == pytest.approx(5 / 6)
    # cluster ids and class labels need not be contiguous; perfect clustering gives 1
    assert purity([7, 7, 3, 3], [5, 5, 0, 0]) == 1.0
    assert purity(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 2, 2])) == 0.5


def test_minmax_scaling_maps_each_dimension_to_minus_one_one_and_a_constant_one_to_zero():
    x = torch.tensor([[0.0, 5.0, -2.0], [2.0, 5.0, 0.0], [1.0, 5.0, 6.0]])
    scaled = minmax_scale(x)
    expected = torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, -0.5], [0.0, 0.0, 1.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(scaled, expected)


def test_kmeans_purity_matches_the_scikit_learn_reference_and_finds_clean_clusters():
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (120,), generator=g)
    features = torch.randn(120, 7, generator=g) + 0.8 * nn.functional.one_hot(labels, 7).float()
    x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features.double().numpy())
    pred = KMeans(n_clusters=4, random_state=0, n_init=10).fit_predict(x)
    counts = np.zeros((4, 4))
    np.add.at(counts, (pred, labels.numpy()), 1)
    assert kmeans_purity(features, labels, 4) == pytest.approx(counts.max(1).sum() / 120, abs=1e-12)
    centres = 10 * torch.eye(4, 7)
    clean = centres[labels] + 0.01 * torch.randn(120, 7, generator=g)
    assert kmeans_purity(clean, labels, 4) == 1.0


# -- the update ------------------------------------------------------------------------------

def test_soft_reinit_follows_the_rule_and_zero_alpha_is_bit_exact():
    theta0 = [torch.randn(3, 2), torch.randn(4)]
    params = [torch.randn(3, 2), torch.tensor([-0.0, 1.0, 2.0, 3.0])]
    before = [p.clone() for p in params]
    soft_reinit_(params, theta0, 0.0)
    for p, b in zip(params, before):
        assert torch.equal(p, b) and torch.equal(torch.signbit(p), torch.signbit(b))
    soft_reinit_(params, theta0, 0.25)
    for p, p0, b in zip(params, theta0, before):
        torch.testing.assert_close(p, 0.25 * p0 + 0.75 * b)


@pytest.mark.parametrize("M", [2, 3])
def test_event_moves_every_encoder_parameter_towards_theta0_and_nothing_else(M):
    trainer = make_trainer(M, bn=True)
    method, model = trainer.method, trainer.model
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_a_little(trainer)
    params, buffers, opt_state = snapshot(trainer)
    assert any(not torch.equal(params[n], theta0[n]) for n in params)
    assert any(bool(b.abs().sum() > 0) for n, b in buffers.items() if n.endswith("running_mean"))
    assert opt_state["state"]  # momentum buffers exist

    diagnosis = method.relearn(trainer)

    assert method.events == 1
    assert set(diagnosis) == set(NAMES[:M])
    assert any(d["alpha"] > 0 for d in diagnosis.values())  # the splits differ, so some gap opens
    after = dict(model.named_parameters())
    for name in params:
        if name.startswith("encoders."):
            m = name.split(".")[1]
            alpha = diagnosis[m]["alpha"]
            torch.testing.assert_close(after[name].detach(),
                                       alpha * theta0[name] + (1 - alpha) * params[name])
            if alpha == 0:
                assert torch.equal(after[name], params[name]), name
        else:
            assert torch.equal(after[name], params[name]), name  # the head
    assert any(p.ndim == 1 and not torch.equal(after[n], params[n])
               for n, p in after.items() if n.startswith("encoders.a."))  # 1-D included
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert_same(trainer.optimizer.state_dict(), opt_state)
    logged = method.log.flush()
    for m, d in diagnosis.items():
        assert d["gap"] == abs(d["purity_train"] - d["purity_val"])
        assert d["alpha"] == pytest.approx(math.tanh(3 * d["gap"]))
        assert 0 <= d["alpha"] < 1
        assert logged[f"purity_train_{m}"] == d["purity_train"]
        assert logged[f"purity_val_{m}"] == d["purity_val"]
        assert logged[f"gap_{m}"] == d["gap"]
        assert logged[f"reinit_{m}"] == d["alpha"]


@pytest.mark.parametrize("M", [2, 3])
def test_equal_purities_give_zero_alpha_and_leave_the_encoders_bit_for_bit(M):
    trainer = make_trainer(M, same_splits=True)  # validation = train: identical features
    train_a_little(trainer)
    params, buffers, opt_state = snapshot(trainer)
    diagnosis = trainer.method.relearn(trainer)
    for d in diagnosis.values():
        assert d["purity_train"] == d["purity_val"] and d["gap"] == 0 and d["alpha"] == 0
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, params[name]), name
    assert_same(trainer.optimizer.state_dict(), opt_state)


def test_extraction_reads_train_with_eval_transforms_and_validation_never_test():
    trainer = make_trainer(3)
    data = trainer.data
    data.train.refuse = True  # the augmented training view is not what is diagnosed
    iterated = []
    loader = trainer.eval_loader
    trainer.eval_loader = lambda dataset: iterated.append(dataset) or loader(dataset)
    was_training = trainer.model.training
    trainer.method.relearn(trainer)
    assert [id(d) for d in iterated] == [id(data.train_for_eval), id(data.val)]
    assert data.train_eval.reads > 0 and data.val.reads > 0
    assert trainer.model.training == was_training


# -- the schedule ----------------------------------------------------------------------------

def event_epochs(params, epochs=13):
    trainer = make_trainer(2, params)
    method = trainer.method
    happened, counts = [], []
    method.diagnose = lambda loop: {m: {"purity_train": 0.5, "purity_val": 0.5, "gap": 0.0,
                                        "alpha": 0.0} for m in method.modalities}
    for e in range(epochs):
        before = method.events
        method.on_epoch_end(trainer, e)
        if method.events > before:
            happened.append(e)
        record = method.log.flush()
        counts.append(record["events"])
        assert ("gap_a" in record) == (e in happened[-1:])
    assert counts == [sum(h <= e for h in happened) for e in range(epochs)]
    return happened


@pytest.mark.parametrize("params,expected", [
    ({"reinit_epoch": 3, "reinit_num": 2}, [3, 6]),
    ({"reinit_epoch": 3, "reinit_num": 10}, [3, 6, 9, 12]),
    ({"reinit_epoch": 1, "reinit_num": 3}, [1, 2, 3]),  # never epoch 0
    ({"reinit_epoch": 2, "reinit_num": 0}, []),
    ({"reinit_epoch": 3, "reinit_num": 2, "start": 4}, [6, 9]),  # inside the window only
    ({"reinit_epoch": 3, "reinit_num": 5, "start": 4, "end": 9}, [6, 9]),
])
def test_events_only_at_reinit_epoch_multiples_at_most_reinit_num_times(params, expected):
    assert event_epochs(params) == expected


def test_defaults_and_validation():
    info = toy_info(num_classes=K)
    ctx = RunContext(info, ModelSpec(), 0, torch.device("cpu"))
    p = build_method("ReLearning", {}, ctx).params
    assert (p.move_lambda, p.reinit_epoch, p.reinit_num, p.start, p.end) == (3.0, 15, 2, 0, 80)
    for bad in ({"move_lambda": -1}, {"reinit_epoch": 0}, {"reinit_num": -1}, {"reinit_epoch": 1.5},
                {"start": 5, "end": 2}, {"moov_lambda": 1}):
        with pytest.raises(SpecError):
            build_method("ReLearning", bad, ctx)
    assert ReLearning.windowed and ReLearning.extra_passes and ReLearning.min_modalities == 2


def test_method_state_restores_theta0_and_the_event_count():
    trainer = make_trainer(2)
    train_a_little(trainer)
    trainer.method.relearn(trainer)
    state = trainer.method.state_dict()
    fresh = make_trainer(2)
    train_a_little(fresh, steps=1)
    fresh.method.theta0 = {m: [t + 1 for t in ts] for m, ts in fresh.method.theta0.items()}
    fresh.method.load_state_dict(state)
    assert fresh.method.events == 1
    for m in fresh.method.modalities:
        for a, b in zip(fresh.method.theta0[m], trainer.method.theta0[m], strict=True):
            assert torch.equal(a, b)


# -- end to end ------------------------------------------------------------------------------

FAST = {"epochs": 3, "reinit_epoch": 1, "progress": False}


def test_run_logs_events_reads_train_and_validation_only_and_costs_more_than_baseline(
        tmp_path, monkeypatch):
    extracted, seen = [], []
    extract = ReLearning.extract

    def recording_extract(self, loop, dataset):
        extracted.append(dataset)
        return extract(self, loop, dataset)

    monkeypatch.setattr(ReLearning, "extract", recording_extract)
    run = bbench.run("ReLearning", "mfeat", output_root=str(tmp_path),
                     callbacks=[lambda trainer, epoch, record: seen.append(trainer.data)], **FAST)
    data = seen[0]
    assert [id(d) for d in extracted] == [id(data.train_for_eval), id(data.val)] * 2
    assert {len(d) for d in extracted} == {len(data.train), len(data.val)}
    assert not hasattr(data, "test")
    base = bbench.run("Baseline", "mfeat", epochs=3, progress=False, output_root=str(tmp_path))
    methods = [h["method"] for h in run.history]
    assert [r["events"] for r in methods] == [0.0, 1.0, 2.0]
    assert "gap_fac" not in methods[0]
    for r in methods[1:]:
        for m in ("fac", "mor"):
            assert 0 <= r[f"reinit_{m}"] < 1
            gap = abs(r[f"purity_train_{m}"] - r[f"purity_val_{m}"])
            assert r[f"gap_{m}"] == pytest.approx(gap)
    assert run.metrics["train_flops"] > base.metrics["train_flops"]
    assert isinstance(RunResult.load(run.run_dir), RunResult)


def test_an_interrupted_run_resumed_ends_with_the_uninterrupted_metrics(tmp_path):
    whole = bbench.run("ReLearning", "mfeat", output_root=str(tmp_path), **FAST)

    resumed = interrupted_and_resumed("ReLearning", "mfeat", 1, output_root=str(tmp_path), **FAST)
    for key in ("acc", "f1", "imbalance", "train_flops", "best_epoch", "val_acc"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
