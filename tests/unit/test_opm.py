import pytest
import torch

from bbench.methods.opm import drop_probabilities
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info

INFO = toy_info(dims=(8, 8), num_classes=3)
BATCH = toy_batch(INFO, n=64)


def test_reference_drop_probability_and_rescale():
    q, ratio = drop_probabilities(torch.tensor([2.0, 1.0], dtype=torch.float64), 0.4, 0.5)
    assert q.tolist() == pytest.approx([0.552319, 0.0], abs=1e-6)
    theta = (8 * q).sum() / 16
    assert float(theta) == pytest.approx(0.276159, abs=1e-6)
    assert float(1 / (1 - theta)) == pytest.approx(1.381520, abs=1e-6)


def test_weakest_and_tied_modalities_are_never_dropped():
    q, _ = drop_probabilities(torch.tensor([1.0, 1.0]), 0.4, 0.5)
    assert q.tolist() == [0.0, 0.0]
    q, _ = drop_probabilities(torch.tensor([3.0, 1.0, 2.0]), 0.4, 0.5)
    assert q[1] == 0 and 0.4 < q[2] < q[0] <= min(1.0, 0.4 * 1.5)


@pytest.mark.parametrize("params", [{"p_exe": 0.0}, {"q_base": 0.0, "p_exe": 1.0}])
def test_no_dropping_is_exactly_the_baseline_step(params):
    base, base_out = one_step("Baseline", {}, INFO, BATCH)
    opm, opm_out = one_step("OPM", {**params, "start": 0}, INFO, BATCH)
    assert torch.equal(base_out.loss, opm_out.loss)
    for (n, a), (_, b) in zip(grads_of(base.model).items(), grads_of(opm.model).items()):
        assert torch.equal(a, b), n


def test_kept_features_are_rescaled_dropped_are_zero_and_dead_samples_leave_the_loss():
    trainer, out = one_step("OPM", {"p_exe": 1.0, "q_base": 0.9, "alpha": 1.0, "start": 0},
                            INFO, BATCH, lr=0.0)
    keep, scale = out.out.extras["keep"], out.out.extras["scale"]
    assert (~keep).any()
    dropped = [f * keep[:, i, None] * scale for i, f in enumerate(out.out.features)]
    torch.testing.assert_close(out.out.logits, trainer.model.head(dropped))
    alive = out.out.extras["alive"]
    assert torch.equal(alive, keep.any(1))
    per_sample = torch.nn.functional.cross_entropy(out.out.logits, BATCH["label"], reduction="none")
    torch.testing.assert_close(out.loss, per_sample[alive].mean())
