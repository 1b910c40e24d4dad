"""`predict` and `split_metrics`: every sample once, the fused and each modality's argmax in
their rows, the loss a mean over samples, the model's mode restored."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bbench.config.specs import ModelSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.evaluate import _own_storage, eval_loader, predict, split_metrics
from bbench.methods.base import Method, RunContext
from bbench.methods.registry import build_method
from bbench.metrics.classification import accuracy, macro_f1
from bbench.models.fusion import FUSIONS
from bbench.testing.methods import toy_batch, toy_info

CPU = torch.device("cpu")
INFO = toy_info(dims=(5, 3, 4), num_classes=4, names=("a", "b", "c"))


def model_and_method():
    method = build_method("Baseline", {}, RunContext(INFO, ModelSpec(), 0, CPU))
    torch.manual_seed(0)
    return method, method.build_model()


def dataset(n: int) -> TensorMultimodalDataset:
    batch = toy_batch(INFO, n=n, seed=1)
    return TensorMultimodalDataset({m: batch[m] for m in INFO.modalities}, batch["label"])


@pytest.mark.parametrize(("n", "batch_size"), [(13, 4), (8, 8), (5, 16)])
def test_predict_rows_are_the_fused_and_every_modality_argmax_of_all_samples(n, batch_size):
    method, model = model_and_method()
    data = dataset(n)
    model.train()
    pred = predict(method, model, eval_loader(data, batch_size), CPU)
    assert model.training  # the mode it found
    model.eval()
    with torch.no_grad():
        features = model.encode(data.features)
        fused = model.fuse(features)
        unimodal = [model.unimodal_logits(features, i) for i in range(len(INFO.modalities))]
    assert pred.names == INFO.modalities
    assert pred.predicted.shape == (1 + len(INFO.modalities), n)
    assert torch.equal(pred.labels, data.labels)
    assert torch.equal(pred.fused, fused.argmax(1))
    for m, z in zip(INFO.modalities, unimodal):
        assert torch.equal(pred.per_modality[m], z.argmax(1))
    # The mean of the per-sample losses (the batches' sums added in float64).
    expected = F.cross_entropy(fused, data.labels, reduction="none").double().mean().item()
    assert pred.loss == pytest.approx(expected, rel=1e-6)


def expected_rows(method: Method, model: nn.Module, data: TensorMultimodalDataset) -> torch.Tensor:
    """[1 + M, N]: the method's own evaluation logits of every sample, batch by batch of one."""
    with torch.no_grad():
        rows = [torch.stack([z, *per]).argmax(-1) for z, per in (
            method.eval_logits(model.eval(), {m: data.features[m][i:i + 1] for m in INFO.modalities})
            for i in range(len(data)))]
    return torch.cat(rows, 1)


def test_held_features_own_their_storage():
    """A pooled token `y[:, 0]` is copied before it is held; a tensor of its own is not."""
    tokens = torch.randn(4, 197, 8)
    pooled = _own_storage(tokens[:, 0])
    assert torch.equal(pooled, tokens[:, 0])
    assert pooled.untyped_storage().nbytes() == pooled.numel() * pooled.element_size()
    owned = torch.randn(4, 8)
    assert _own_storage(owned) is owned


def test_per_modality_logits_formed_over_many_batches_flush_at_the_row_bound(monkeypatch):
    """The default evaluation's per-modality logits are formed for up to UNIMODAL_ROWS held
    samples at once; a bound smaller than the split flushes mid-way, with the same rows."""
    import bbench.engine.evaluate as evaluate

    method, model = model_and_method()
    data = dataset(13)
    calls = []
    original = model.unimodal_logits
    monkeypatch.setattr(model, "unimodal_logits",
                        lambda features, i: calls.append(features[i].shape[0]) or original(features, i))
    monkeypatch.setattr(evaluate, "UNIMODAL_ROWS", 5)
    pred = predict(method, model, eval_loader(data, 3), CPU)
    assert calls == [6] * 3 + [6] * 3 + [1] * 3  # 2 batches of 3 held, twice; the last one
    assert torch.equal(pred.predicted, expected_rows(method, model, data))


@pytest.mark.parametrize("fusion", sorted(FUSIONS.names()))
def test_every_fusion_heads_held_per_modality_rows_are_its_per_sample_ones(fusion):
    """Formed over many held samples, each head's per-modality predictions are the ones its
    eval_logits gives sample by sample (the heads' unimodal logits are row-wise)."""
    method = build_method("Baseline", {}, RunContext(INFO, ModelSpec(fusion=fusion), 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    data = dataset(19)
    pred = predict(method, model, eval_loader(data, 4), CPU)
    assert torch.equal(pred.predicted, expected_rows(method, model, data))


def test_a_method_with_its_own_evaluation_logits_is_evaluated_by_them():
    method, model = model_and_method()

    class Reversed(type(method)):
        """Its per-modality logits reversed: nothing of the model's default head path."""

        def eval_logits(self, model, batch, present=None, unimodal=True):
            fused, per = super().eval_logits(model, batch, present, unimodal)
            return fused, [-z for z in per]

    reversed_method = Reversed(method.params, method.ctx)
    assert not reversed_method.default_evaluation()
    data = dataset(11)
    pred = predict(reversed_method, model, eval_loader(data, 4), CPU)
    assert torch.equal(pred.predicted, expected_rows(reversed_method, model, data))
    assert not torch.equal(pred.predicted[1:], expected_rows(method, model, data)[1:])


def test_split_metrics_are_each_rows_accuracy_and_macro_f1():
    method, model = model_and_method()
    data = dataset(21)
    pred = predict(method, model, eval_loader(data, 8), CPU)
    metrics = split_metrics(pred, INFO.num_classes)
    assert set(metrics) == {"acc", "f1", "loss", *(f"{k}_{m}" for m in INFO.modalities
                                                   for k in ("acc", "f1"))}
    assert metrics["acc"] == accuracy(pred.fused, pred.labels)
    assert metrics["f1"] == macro_f1(pred.fused, pred.labels, INFO.num_classes)
    for m in INFO.modalities:
        assert metrics[f"acc_{m}"] == accuracy(pred.per_modality[m], pred.labels)
        assert metrics[f"f1_{m}"] == macro_f1(pred.per_modality[m], pred.labels, INFO.num_classes)
    assert metrics["loss"] == pred.loss and math.isfinite(pred.loss)


def test_an_empty_split_predicts_nothing_and_scores_zero():
    method, model = model_and_method()
    pred = predict(method, model, eval_loader(dataset(0), 4), CPU)
    assert pred.predicted.shape == (1 + len(INFO.modalities), 0) and pred.labels.numel() == 0
    metrics = split_metrics(pred, INFO.num_classes)
    assert metrics["acc"] == 0.0 and metrics["loss"] == 0.0 and metrics["f1_a"] == 0.0
