"""MMCosine (methods.md §6.1) and its cosine head: the properties a correct implementation
satisfies, the head's place in the fusion registry and in Shapley's one-pass path, the model
the method builds, and a whole run through the CLI.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader

import bbench
from bbench.cli import main
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.mmcosine import MMCosine
from bbench.methods.registry import METHODS, build_method, method_params
from bbench.metrics.shapley import (choose_path, compute_shapley, shapley_from_values,
                                    subset_correct_counts)
from bbench.models.fusion import FUSIONS, CosineHead, build_fusion
from bbench.models.modes import eval_mode
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info

CPU = torch.device("cpu")
DIMS = {2: (6, 4), 3: (6, 4, 5)}
NAMES = {2: ("a", "b"), 3: ("a", "b", "c")}
K = 5
FAST = settings(max_examples=30, deadline=None)


def cosine_head(M: int, scale: float = 15.0, seed: int = 0) -> CosineHead:
    torch.manual_seed(seed)
    return build_fusion("cosine", DIMS[M], K, {"scale": scale}).double()


def features(M: int, seed: int, B: int = 12, spread: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [spread * torch.randn(B, d, generator=g, dtype=torch.float64) for d in DIMS[M]]


def reference_logits(head: CosineHead, feats: list[torch.Tensor], index: int) -> torch.Tensor:
    """s·cos(h_m, w_{m,c}) written out: dot products over the two norms."""
    offset = sum(head.dims[:index])
    W = head.fc.weight[:, offset:offset + head.dims[index]]
    h = feats[index]
    return head.scale * (h @ W.t()) / (h.norm(dim=1, keepdim=True) * W.norm(dim=1)[None, :])


def make_method(info, **params) -> MMCosine:
    return build_method("MMCosine", params, RunContext(info, ModelSpec(), 0, CPU))


# -- the head ------------------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_the_logits_are_s_times_the_cosines_and_the_fused_logits_their_sum(M):
    head, feats = cosine_head(M, 10.0), features(M, 1)
    for i in range(M):
        torch.testing.assert_close(head.unimodal(feats, i), reference_logits(head, feats, i))
    torch.testing.assert_close(head(feats), sum(head.unimodal(feats, i) for i in range(M)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("M", [2, 3])
@given(seed=st.integers(0, 2**31 - 1), log_range=st.floats(0.1, 6))
@FAST
def test_positive_rescaling_of_features_per_sample_or_of_weight_rows_leaves_every_logit_unchanged(
        M, seed, log_range):
    head, feats = cosine_head(M, seed=seed % 7), features(M, seed)
    g = torch.Generator().manual_seed(seed)
    before = torch.stack([head.unimodal(feats, i) for i in range(M)])
    fused = head(feats)
    factor = lambda *shape: torch.exp(log_range * (2 * torch.rand(*shape, generator=g) - 1)  # noqa: E731
                                      ).double()
    scaled = [f * factor(f.shape[0], 1) for f in feats]
    original = head.fc.weight.detach().clone()
    with torch.no_grad():
        for block in torch.split(head.fc.weight, head.dims, dim=1):
            block.mul_(factor(K, 1))  # split gives views: each w_{m,c} scaled by its own factor
    assert not torch.allclose(head.fc.weight, original)
    after = torch.stack([head.unimodal(scaled, i) for i in range(M)])
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head(scaled), fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("M", [2, 3])
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100), spread=st.floats(1e-3, 1e3))
@FAST
def test_every_unimodal_logit_is_at_most_s_and_every_fused_one_at_most_m_s(M, seed, scale, spread):
    head, feats = cosine_head(M, scale), features(M, seed, spread=spread)
    with torch.no_grad():
        head.fc.weight.mul_(spread)  # large weights do not help either
    bound = scale * (1 + 1e-12)
    with torch.no_grad():
        for i in range(M):
            assert float(head.unimodal(feats, i).abs().max()) <= bound
        assert float(head(feats).abs().max()) <= M * bound


@given(seed=st.integers(0, 2**31 - 1), c=st.integers(0, K - 1), size=st.floats(1e-3, 1e3),
       scale=st.floats(0.01, 100))
@FAST
def test_a_feature_parallel_to_a_weight_row_gives_exactly_s(seed, c, size, scale):
    head = cosine_head(2, scale)
    g = torch.Generator().manual_seed(seed)
    row = head.fc.weight[c, :DIMS[2][0]].detach()
    feats = [size * row[None, :].clone(), torch.randn(1, DIMS[2][1], generator=g, dtype=torch.float64)]
    with torch.no_grad():
        assert float(head.unimodal(feats, 0)[0, c]) == pytest.approx(scale, rel=1e-14)


def test_an_axis_aligned_parallel_pair_gives_s_bit_for_bit_and_a_zero_feature_zero_logits():
    head = build_fusion("cosine", (3, 2), 2, {"scale": 15.0})
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[0.5, 0.0, 0.0, 1.0, 1.0], [0.0, 2.0, 0.0, -1.0, 0.0]]))
    feats = [torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 3.0]])]
    z_a = head.unimodal(feats, 0)
    assert z_a[0, 0].item() == 15.0 and z_a[0, 1].item() == 0.0
    assert torch.equal(z_a[1], torch.zeros(2))  # eps 1e-12: a zero vector gives zero logits
    assert torch.equal(head.unimodal(feats, 1)[0], torch.zeros(2))
    assert head.unimodal(feats, 1)[1, 0].item() == pytest.approx(15.0, rel=1e-6)
    assert head.unimodal(feats, 1)[1, 1].item() == pytest.approx(-15 / math.sqrt(2), rel=1e-6)


@pytest.mark.parametrize("M", [2, 3])
def test_affine_contributions_are_the_unimodal_logits_with_a_zero_bias(M):
    head, feats = cosine_head(M), features(M, 2)
    contrib, bias = head.affine_contributions(feats)
    assert contrib.shape == (M, 12, K) and torch.equal(bias, torch.zeros(K, dtype=torch.float64))
    for i in range(M):
        assert torch.equal(contrib[i], head.unimodal(feats, i))
    torch.testing.assert_close(bias + contrib.sum(0), head(feats), rtol=1e-12, atol=1e-12)


def test_the_head_is_registered_with_its_scale_option_and_range():
    assert "cosine" in FUSIONS
    head = build_fusion("cosine", (3, 4), 2)
    assert isinstance(head, CosineHead) and head.scale == 15.0 and head.additive
    assert build_fusion("COSINE", (3, 4), 2, {"scale": "10"}).scale == 10.0
    assert [n for n, _ in head.named_parameters()] == ["fc.weight"]  # no bias
    assert head.fc.weight.shape == (2, 7)
    with pytest.raises(SpecError, match=r"scale=0\.0 is out of range; need scale > 0"):
        build_fusion("cosine", (3, 4), 2, {"scale": 0})


# -- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_gradients_are_orthogonal_to_each_feature_and_to_each_weight_row(M):
    """∂L/∂h_{m,i} ⟂ h_{m,i} per sample and ∂L/∂w_{m,c} ⟂ w_{m,c}: a norm cannot lower the loss."""
    info = toy_info(DIMS[M], K, NAMES[M])
    torch.manual_seed(0)
    model = make_method(info).build_model().double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in toy_batch(info, n=16).items()}
    feats = [f.detach().requires_grad_(True) for f in model.encode(batch)]
    loss = F.cross_entropy(model.fuse(feats), batch["label"])
    loss.backward()
    for h, grad in ((f.detach(), f.grad) for f in feats):
        assert float(grad.abs().max()) > 1e-6  # the check below is not vacuous
        cos = (grad * h).sum(1) / (grad.norm(dim=1) * h.norm(dim=1))
        assert float(cos.abs().max()) < 1e-12
    for W, G in zip(torch.split(model.head.fc.weight.detach(), model.head.dims, dim=1),
                    torch.split(model.head.fc.weight.grad, model.head.dims, dim=1)):
        assert float(G.abs().max()) > 1e-6
        assert float(((G * W).sum(1) / (G.norm(dim=1) * W.norm(dim=1))).abs().max()) < 1e-12


@pytest.mark.parametrize("M", [2, 3])
def test_the_step_is_one_ce_on_the_cosine_logits_and_the_head_has_no_bias_to_move(M):
    info = toy_info(DIMS[M], K, NAMES[M])
    batch = toy_batch(info, n=16, seed=M)
    trainer, out = one_step("MMCosine", {"scale": 10.0}, info, batch, lr=0.0)
    model = trainer.model
    logits = model(batch)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, batch["label"]))
    params = [p for _, p in model.named_parameters()]
    expected = torch.autograd.grad(F.cross_entropy(logits, batch["label"]), params)
    grads = grads_of(model)
    assert list(grads) == [n for n, _ in model.named_parameters()]
    assert [n for n in grads if n.startswith("head.")] == ["head.fc.weight"]  # no bias anywhere
    for (name, got), want in zip(grads.items(), expected):
        torch.testing.assert_close(got, want, msg=name)


# -- the model, the evaluation and Shapley --------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_the_model_is_the_default_encoders_with_the_cosine_head_at_the_method_scale(M):
    info = toy_info(DIMS[M], K, NAMES[M])
    model = make_method(info, scale=7.5).build_model()
    assert isinstance(model.head, CosineHead) and model.head.scale == 7.5
    assert model.separable and list(model.encoders) == list(NAMES[M])
    torch.manual_seed(0)
    plain = build_method("Baseline", {}, RunContext(info, ModelSpec(), 0, CPU)).build_model()
    torch.manual_seed(0)
    mine = make_method(info).build_model()
    for m in NAMES[M]:  # same encoder classes and shapes: weights move between the models
        a, b = plain.encoders[m].state_dict(), mine.encoders[m].state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert mine.head.fc.weight.shape == plain.head.fc.weight.shape


def test_a_run_asking_for_another_fusion_head_is_refused():
    info = toy_info()
    method = build_method("MMCosine", {}, RunContext(info, ModelSpec(fusion="sum"), 0, CPU))
    with pytest.raises(SpecError, match="MMCosine: fusion 'sum' is not accepted"):
        method.build_model()


@pytest.mark.parametrize("M", [2, 3])
def test_evaluation_uses_the_same_cosine_logits(M):
    info = toy_info(DIMS[M], K, NAMES[M])
    method = make_method(info)
    model = method.build_model()
    batch = toy_batch(info, n=10)
    with eval_mode(model), torch.no_grad():
        fused, per_modality = method.eval_logits(model, batch)
        feats = model.encode(batch)
        torch.testing.assert_close(fused, sum(model.head.unimodal(feats, i) for i in range(M)))
        for i in range(M):
            torch.testing.assert_close(per_modality[i], model.head.unimodal(feats, i))
            assert float(per_modality[i].abs().max()) <= 15.0 * (1 + 1e-6)


@pytest.mark.parametrize("mask", ["input", "feature"])
@pytest.mark.parametrize("M", [2, 3])
def test_shapley_on_the_one_pass_path_equals_a_brute_force_masked_evaluation(M, mask):
    info = toy_info(DIMS[M], K, NAMES[M])
    method = make_method(info)
    torch.manual_seed(M)
    model = method.build_model().double()
    for p in model.parameters():  # push biases away from 0 so E_m(0) != 0
        torch.nn.init.normal_(p, std=0.5)
    assert choose_path(method, model) == "one-pass-linear"
    n = 90
    g = torch.Generator().manual_seed(5)
    inputs = {m: torch.randn(n, d, generator=g, dtype=torch.float64) for m, d in zip(NAMES[M], DIMS[M])}
    labels = torch.randint(0, K, (n,), generator=g)
    loader = DataLoader(TensorMultimodalDataset(inputs, labels), batch_size=40, collate_fn=lambda b: b)
    # brute force: for every subset, mask the absent modalities and run the whole model
    accuracy = []
    with eval_mode(model), torch.no_grad():
        for s in range(1 << M):
            present = [bool(s >> i & 1) for i in range(M)]
            if mask == "input":
                batch = {m: x if present[i] else torch.zeros_like(x) for i, (m, x) in enumerate(inputs.items())}
                logits = model(batch)
            else:
                feats = model.encode(inputs)
                logits = model.head([f if present[i] else torch.zeros_like(f) for i, f in enumerate(feats)])
            accuracy.append(float((logits.argmax(1) == labels).double().mean()))
    counts, total = subset_correct_counts(method, model, loader, CPU, mask)
    assert total == n and [c / n for c in counts.tolist()] == accuracy
    assert 0 < accuracy[-1]
    result = compute_shapley(method, model, loader, CPU, mask)
    assert result.path == "one-pass-linear"
    expected = shapley_from_values(accuracy, M)
    assert list(result.values.values()) == pytest.approx(expected, abs=1e-12)


# -- hyper-parameters and facts ------------------------------------------------------------------

def test_defaults_ranges_and_the_window_refusal():
    assert method_params(MMCosine, {}).scale == 15.0  # BalanceMM (the original: 10)
    assert method_params(MMCosine, {"scale": 10}).scale == 10.0
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(SpecError, match="MMCosine: scale="):
            method_params(MMCosine, {"scale": bad})
    for key in ("start", "end", "modulation_starts"):
        with pytest.raises(SpecError, match="MMCosine"):
            method_params(MMCosine, {key: 1})
    with pytest.raises(SpecError, match="not a windowed method"):
        method_params(MMCosine, {"start": 0})
    cls = METHODS.get("mmcosine")
    assert cls is MMCosine and cls.family is Family.OBJECTIVE and not cls.windowed
    assert cls.min_modalities == 2 and not cls.extra_passes and cls.default_evaluation()


# -- whole runs -----------------------------------------------------------------------------------

def test_the_cli_run_writes_a_record_with_the_method_log(tmp_path):
    out = tmp_path / "mmcosine"
    argv = ["run", "--method", "MMCosine", "--dataset", "mfeat", "--epochs", "2", "--set",
            "dataset.options.subsample_per_class=20", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["spec"]["method_params"] == {"scale": 15.0}
    modalities = ("fac", "mor")
    for h in record["history"]:
        logged = h["method"]
        assert set(logged) == {f"{k}_{m}" for k in ("cos_true", "feat_norm") for m in modalities}
        for m in modalities:
            assert -1 <= logged[f"cos_true_{m}"] <= 1 and logged[f"feat_norm_{m}"] > 0
    first, last = record["history"][0]["method"], record["history"][-1]["method"]
    assert all(last[f"cos_true_{m}"] > first[f"cos_true_{m}"] for m in modalities)  # it learns
    assert "imbalance" in record["metrics"] and "active_epochs" not in record["metrics"]


def test_a_three_modality_run_logs_every_modality(tmp_path):
    result = bbench.run("MMCosine", "mfeat-fac-fou-mor", epochs=1, progress=False,
                        output_root=str(tmp_path), **{"dataset.options": {"subsample_per_class": 20}})
    logged = result.history[0]["method"]
    assert set(logged) == {f"{k}_{m}" for k in ("cos_true", "feat_norm") for m in ("fac", "fou", "mor")}
    assert len(result.metrics["shapley"]) == 3
