import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bbench.methods.mmpareto import combine_tensor, pareto_weights
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info

INFO = toy_info(dims=(6, 5), num_classes=4)
BATCH = toy_batch(INFO, n=16)


def test_reference_single_tensor_encoder():
    g_mm, g_m = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    k0, k1, cos = pareto_weights(g_mm, g_m)
    assert float(cos) < 0 and float(k0) == pytest.approx(0.6)
    d = k0 * g_mm + k1 * g_m
    assert d.tolist() == pytest.approx([0.2, 0.4])
    assert float(d @ g_mm) == pytest.approx(0.2) and float(d @ g_m) == pytest.approx(0.2)
    final, rescaled = combine_tensor(g_mm, g_m, k0, k1, 1.5)
    assert bool(rescaled)
    assert final.tolist() == pytest.approx([0.670820, 1.341641], abs=1e-6)


vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=3, max_size=3)


@given(vectors, vectors)
@settings(max_examples=200)
def test_direction_harms_neither_loss(a, b):
    g_mm, g_m = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    k0, k1, _ = pareto_weights(g_mm, g_m)
    d = k0 * g_mm + k1 * g_m
    assert 0 <= float(k0) <= 1
    assert float(d @ g_mm) >= -1e-9 * (1 + float(g_mm @ g_mm))
    assert float(d @ g_m) >= -1e-9 * (1 + float(g_m @ g_m))


@given(vectors, vectors, st.floats(0.1, 3))
@settings(max_examples=100)
def test_final_norm_is_gamma_times_the_larger_of_t_and_u(a, b, gamma):
    g_mm, g_m = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    k0, k1, _ = pareto_weights(g_mm, g_m)
    u = 2 * (k0 * g_mm + k1 * g_m)
    final, _ = combine_tensor(g_mm, g_m, k0, k1, gamma)
    if float(u.norm()) == 0:
        assert float(final.norm()) == 0
    else:
        expected = gamma * max(float((g_mm + g_m).norm()), float(u.norm()))
        assert float(final.norm()) == pytest.approx(expected, rel=1e-9)


def _separate_gradients(model, batch):
    """g_mm and each g_m computed independently, straight from the losses."""
    features = model.encode(batch)
    z = model.head(features)
    y = batch["label"]
    params = list(model.parameters())
    g_mm = torch.autograd.grad(F.cross_entropy(z, y), params, retain_graph=True, allow_unused=True)
    g_uni = [torch.autograd.grad(F.cross_entropy(model.unimodal_logits(features, i), y), params,
                                 retain_graph=True, allow_unused=True) for i in range(2)]
    return params, g_mm, g_uni


def test_head_gets_sum_of_all_loss_gradients_and_no_conflict_gives_gamma_sum():
    torch.manual_seed(0)
    trainer, _ = one_step("MMPareto", {"gamma": 1.5}, INFO, BATCH, lr=0.0)
    # lr = 0: parameters are still the initial ones, so recompute the losses' gradients there.
    model = trainer.model
    params, g_mm, g_uni = _separate_gradients(model, BATCH)
    names = [n for n, _ in model.named_parameters()]
    grads = grads_of(model)
    logged = trainer.method.log.flush()
    for i, name in enumerate(names):
        if name.startswith("head."):
            expected = g_mm[i] + sum(g[i] for g in g_uni if g[i] is not None)
            torch.testing.assert_close(grads[name], expected)
    for mi, m in enumerate(INFO.modalities):
        mine = [i for i, name in enumerate(names) if name.startswith(f"encoders.{m}.")]
        flat_mm = torch.cat([g_mm[i].flatten() for i in mine])
        flat_m = torch.cat([g_uni[mi][i].flatten() for i in mine])
        cos = float(flat_mm @ flat_m / (flat_mm.norm() * flat_m.norm()))
        assert logged[f"cos_{m}"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
        k0, k1, _ = pareto_weights(flat_mm, flat_m)
        for i in mine:
            if cos > 0:  # no conflict: exactly gamma * (g_mm + g_m)
                torch.testing.assert_close(grads[names[i]], 1.5 * (g_mm[i] + g_uni[mi][i]))
            else:  # conflict: min-norm direction, norm gamma * max(t, |u|)
                u = 2 * (k0 * g_mm[i] + k1 * g_uni[mi][i])
                t = (g_mm[i] + g_uni[mi][i]).norm()
                assert float(grads[names[i]].norm()) == pytest.approx(1.5 * max(float(t), float(u.norm())), rel=1e-5)
