import pytest
import torch

from bbench.methods.ogm import ogm_coefficients
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info

INFO = toy_info(dims=(64, 9), num_classes=4)
BATCH = toy_batch(INFO, n=32)


@pytest.mark.parametrize("scores,alpha,expected", [
    ((2.0, 1.0), 0.3, (0.462950, 1.0)),
    ((1.0, 1.5), 0.3, (1.0, 0.578101)),
    ((1.0 + 1e-9, 1.0), 0.8, (0.335963, 1.0)),
])
def test_coefficient_references(scores, alpha, expected):
    coeff, _ = ogm_coefficients(torch.tensor(scores, dtype=torch.float64), alpha)
    assert coeff.tolist() == pytest.approx(expected, abs=1e-6)


def test_ties_modulate_nothing_and_three_modalities_use_the_weakest_as_reference():
    coeff, ratio = ogm_coefficients(torch.tensor([2.0, 2.0]), 0.5)
    assert coeff.tolist() == [1.0, 1.0]
    coeff, ratio = ogm_coefficients(torch.tensor([3.0, 1.0, 2.0]), 0.3)
    assert ratio.tolist() == pytest.approx([3.0, 1.0, 2.0])
    assert coeff[1] == 1.0 and coeff[0] < coeff[2] < 1


def test_plain_ogm_with_zero_alpha_equals_baseline_bit_for_bit():
    base, _ = one_step("Baseline", {}, INFO, BATCH)
    ogm, _ = one_step("OGM", {"alpha": 0.0, "variant": "OGM", "start": 0}, INFO, BATCH)
    for (name, a), (_, b) in zip(grads_of(base.model).items(), grads_of(ogm.model).items()):
        assert torch.equal(a, b), name
    for a, b in zip(base.model.parameters(), ogm.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["OGM", "OGM_GE"])
def test_only_encoder_weight_tensors_are_modulated(variant):
    base, _ = one_step("Baseline", {}, INFO, BATCH)
    ogm, _ = one_step("OGM", {"alpha": 0.8, "variant": variant, "start": 0}, INFO, BATCH)
    gb, go = grads_of(base.model), grads_of(ogm.model)
    changed = {n for n in gb if not torch.equal(gb[n], go[n])}
    assert changed  # something was modulated
    for name in gb:
        param = dict(base.model.named_parameters())[name]
        if name.startswith("head.") or param.ndim < 2:
            assert name not in changed, name


def test_dominant_modality_scaled_by_its_coefficient_and_weak_one_untouched():
    base, _ = one_step("Baseline", {}, INFO, BATCH)
    ogm, _ = one_step("OGM", {"alpha": 0.3, "variant": "OGM", "start": 0}, INFO, BATCH)
    logged = ogm.method.log.flush()
    coef = {m: logged[f"coef_{m}"] for m in INFO.modalities}
    gb, go = grads_of(base.model), grads_of(ogm.model)
    for m in INFO.modalities:
        k = float(coef[m])
        w = f"encoders.{m}.stages.0.0.weight"
        torch.testing.assert_close(go[w], gb[w] * k)
    assert sorted(float(c) == 1.0 for c in coef.values()) == [False, True]


def test_outside_the_window_every_gradient_equals_baseline():
    base, _ = one_step("Baseline", {}, INFO, BATCH, epoch=0)
    ogm, _ = one_step("OGM", {"alpha": 0.8, "start": 3}, INFO, BATCH, epoch=0)
    for (n, a), (_, b) in zip(grads_of(base.model).items(), grads_of(ogm.model).items()):
        assert torch.equal(a, b), n


def test_ge_noise_has_zero_mean_and_the_unmodulated_std():
    base, _ = one_step("Baseline", {}, INFO, BATCH)
    ogm, _ = one_step("OGM", {"alpha": 0.3, "variant": "OGM_GE", "start": 0}, INFO, BATCH)
    m = INFO.modalities[0]
    k = ogm.method.log.flush()[f"coef_{m}"]
    w = f"encoders.{m}.stages.0.0.weight"
    g = grads_of(base.model)[w]
    noise = grads_of(ogm.model)[w] - k * g
    assert abs(float(noise.mean())) < 0.05 * float(g.std())
    assert float(noise.std()) == pytest.approx(float(g.std()), rel=0.05)
