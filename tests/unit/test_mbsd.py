"""MBSD (methods.md §6.3): the properties a correct implementation satisfies, its pitfall, and
whole runs (the CLI record and its logs, an interrupted and resumed run).

The distillation terms are checked against a reference written independently here (explicit
loops over pairs, softmax probabilities and the KL sum in float64) rather than against the
module's own vectorised form.
"""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import bbench
from bbench.cli import main
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.mbsd import MBSD, pair_terms
from bbench.methods.registry import METHODS, build_method, method_params
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed

CPU = torch.device("cpu")
INFOS = {2: toy_info(dims=(6, 4), num_classes=4),
         3: toy_info(dims=(6, 4, 5), num_classes=4, names=("a", "b", "c"))}
BATCHES = {M: toy_batch(info, n=32, seed=M) for M, info in INFOS.items()}
FAST = settings(max_examples=30, deadline=None)


def reference_pair(za: torch.Tensor, zb: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, per-sample (1/K)‖z_a − z_b‖², per-sample KL(p_st ‖ p_wk)) written out in float64."""
    za, zb = za.double(), zb.double()
    pa, pb = za.softmax(1), zb.softmax(1)
    ta, tb = pa[torch.arange(len(y)), y], pb[torch.arange(len(y)), y]
    right = (pa.argmax(1) == y) | (pb.argmax(1) == y)
    w = (ta - tb).abs() * right
    strong = torch.where((ta >= tb)[:, None], pa, pb)
    weak = torch.where((ta >= tb)[:, None], pb, pa)
    kl = (strong * (strong.log() - weak.log())).sum(1)
    rs = ((za - zb) ** 2).sum(1) / za.shape[1]
    return w, rs, kl


def reference_distillation(unimodal: list[torch.Tensor], y: torch.Tensor) -> float:
    """Mean over unordered pairs of (L_RS + L_KL), each the batch mean of w·term."""
    pairs = list(itertools.combinations(range(len(unimodal)), 2))
    total = 0.0
    for a, b in pairs:
        w, rs, kl = reference_pair(unimodal[a], unimodal[b], y)
        total += float((w * rs).mean() + (w * kl).mean())
    return total / len(pairs)


def random_logits(M: int, seed: int, B: int = 24, K: int = 5, spread: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    unimodal = [spread * torch.randn(B, K, generator=g, dtype=torch.float64) for _ in range(M)]
    return unimodal, torch.randint(0, K, (B,), generator=g)


def trainer_for(info, params: dict, lr: float = 0.0) -> Trainer:
    method = build_method("MBSD", params, RunContext(info, ModelSpec(), 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    batch = toy_batch(info, n=8)
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    spec = TrainSpec(optimizer=OptimizerSpec(lr=lr), epochs=1, progress=False)
    return Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False)


# -- the pair terms ---------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
@given(seed=st.integers(0, 2**31 - 1))
@FAST
def test_samples_where_both_members_of_a_pair_are_wrong_contribute_nothing(M, seed):
    unimodal, y = random_logits(M, seed)
    terms = pair_terms(unimodal, y)
    for p, (a, b) in enumerate(itertools.combinations(range(M), 2)):
        both_wrong = (unimodal[a].argmax(1) != y) & (unimodal[b].argmax(1) != y)
        assert torch.all(terms.weight[p][both_wrong] == 0)
        assert torch.all((terms.weight * terms.rs)[p][both_wrong] == 0)
        assert torch.all((terms.weight * terms.kl)[p][both_wrong] == 0)


def test_a_both_wrong_sample_is_present_in_the_fixed_case():
    """The property above is not vacuous: the generated cases do contain such samples."""
    unimodal, y = random_logits(2, 0)
    assert ((unimodal[0].argmax(1) != y) & (unimodal[1].argmax(1) != y)).sum() >= 3


@pytest.mark.parametrize("M", [2, 3])
@given(seed=st.integers(0, 2**31 - 1))
@FAST
def test_pair_terms_match_the_written_out_reference_and_are_non_negative(M, seed):
    unimodal, y = random_logits(M, seed)
    terms = pair_terms(unimodal, y)
    for p, (a, b) in enumerate(itertools.combinations(range(M), 2)):
        w, rs, kl = reference_pair(unimodal[a], unimodal[b], y)
        torch.testing.assert_close(terms.weight[p], w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(terms.rs[p], rs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(terms.kl[p], kl, rtol=1e-9, atol=1e-12)
    assert torch.all(terms.weight >= 0) and torch.all(terms.weight < 1)
    assert torch.all(terms.rs >= 0) and torch.all(terms.kl >= -1e-12)


@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-20, 20))
@FAST
def test_the_distillation_term_is_zero_when_the_two_distributions_agree(seed, shift):
    """z_b = z_a + c gives p_b = p_a: w = 0 on every sample, so both pair losses vanish."""
    (za,), y = random_logits(1, seed)
    terms = pair_terms([za, za + shift], y)
    assert torch.all(terms.weight <= 1e-12)
    rs, kl = terms.pair_losses()
    assert float(rs[0]) <= 1e-12 * (1 + shift * shift) and abs(float(kl[0])) <= 1e-12


def test_reference_values_and_the_scalar_kl_pitfall():
    """K = 2, z_a = (2, 0), z_b = (0, 0), y = 0: both right (b's argmax at its tie is class 0),
    a strong; w = p_a[0] − 1/2, (1/K)‖z_a − z_b‖² = 2, KL(p_a ‖ p_b) = Σ_c p_a,c log(2 p_a,c).
    The public implementations' scalar form p_w·(log p_w − p_s) would be negative here."""
    za, zb, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0])
    terms = pair_terms([za, zb], y)
    pa0 = math.exp(2) / (1 + math.exp(2))
    assert pa0 == pytest.approx(0.880797, abs=1e-6)
    kl = pa0 * math.log(2 * pa0) + (1 - pa0) * math.log(2 * (1 - pa0))
    assert kl == pytest.approx(0.327813, abs=1e-6)
    assert float(terms.weight[0, 0]) == pytest.approx(pa0 - 0.5, rel=1e-6)
    assert float(terms.rs[0, 0]) == pytest.approx(2.0, rel=1e-6)
    assert float(terms.kl[0, 0]) == pytest.approx(kl, rel=1e-5)
    rs_loss, kl_loss = terms.pair_losses()
    assert float(rs_loss[0]) == pytest.approx(2 * (pa0 - 0.5), rel=1e-6)  # 0.761594
    assert float(kl_loss[0]) == pytest.approx((pa0 - 0.5) * kl, rel=1e-5)  # 0.124828
    pitfall = 0.5 * (math.log(0.5) - pa0)  # F.kl_div(p_s, p_w) on the two scalars
    assert pitfall < 0 and float(terms.kl[0, 0]) > 0


def test_ties_make_the_first_member_of_the_pair_the_teacher():
    """p_a[y] = p_b[y] exactly (the other classes' logits swapped): the weight is 0, and a is
    the teacher, so the (unweighted) KL term sends its gradient into b only."""
    za = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    zb = torch.tensor([[0.0, 3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    assert za.log_softmax(1)[0, 0] == zb.log_softmax(1)[0, 0]  # an exact tie
    terms = pair_terms([za, zb], y)
    assert float(terms.weight[0, 0]) == 0.0
    grad_a, grad_b = torch.autograd.grad(terms.kl.sum(), [za, zb])
    assert torch.count_nonzero(grad_a) == 0 and torch.count_nonzero(grad_b) > 0
    swapped = pair_terms([zb, za], y)  # now zb comes first and is the teacher
    grad_b, grad_a = torch.autograd.grad(swapped.kl.sum(), [zb, za])
    assert torch.count_nonzero(grad_b) == 0 and torch.count_nonzero(grad_a) > 0


@pytest.mark.parametrize("M", [2, 3])
def test_no_gradient_flows_through_the_weights_or_the_strong_distribution(M):
    """∂/∂z of Σ_pairs mean_i w_i·rs_i is w_i·(2/K)(z_a − z_b)/B exactly (no term from w), and
    ∂/∂z of the KL loss is w_i(p_wk − p_st)/B on the weak member and 0 on the strong one."""
    unimodal, y = random_logits(M, 7)
    unimodal = [z.clone().requires_grad_(True) for z in unimodal]
    B, K = unimodal[0].shape
    terms = pair_terms(unimodal, y)
    assert not terms.weight.requires_grad
    rs_loss, kl_loss = terms.pair_losses()
    g_rs = torch.autograd.grad(rs_loss.sum(), unimodal, retain_graph=True)
    g_kl = torch.autograd.grad(kl_loss.sum(), unimodal)
    expect_rs = [torch.zeros(B, K, dtype=torch.float64) for _ in range(M)]
    expect_kl = [torch.zeros(B, K, dtype=torch.float64) for _ in range(M)]
    for a, b in itertools.combinations(range(M), 2):
        za, zb = unimodal[a].detach(), unimodal[b].detach()
        w, _, _ = reference_pair(za, zb, y)
        diff = w[:, None] * 2 * (za - zb) / (K * B)
        expect_rs[a] += diff
        expect_rs[b] -= diff
        pa, pb = za.softmax(1), zb.softmax(1)
        a_strong = (pa[torch.arange(B), y] >= pb[torch.arange(B), y])[:, None]
        pull = w[:, None] * (pb - pa) / B  # ∂KL(p_a‖p_b)/∂z_b, weighted
        expect_kl[b] += torch.where(a_strong, pull, torch.zeros_like(pull))
        expect_kl[a] += torch.where(a_strong, torch.zeros_like(pull), -pull)
    for got, want in zip(g_rs, expect_rs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    for got, want in zip(g_kl, expect_kl):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


# -- the step -----------------------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_the_step_is_the_baseline_step_bit_for_bit(M):
    info, batch = INFOS[M], BATCHES[M]
    base, base_out = one_step("Baseline", {}, info, batch)
    mine, mine_out = one_step("MBSD", {"start": 1}, info, batch, epoch=0)
    assert torch.equal(base_out.loss, mine_out.loss)
    assert grads_of(base.model).keys() == grads_of(mine.model).keys()
    for (n, a), (_, b) in zip(grads_of(base.model).items(), grads_of(mine.model).items()):
        assert torch.equal(a, b), n
    assert mine.method.log.flush() == {}


@pytest.mark.parametrize("M", [2, 3])
def test_inside_the_window_the_loss_is_ce_plus_unimodal_ces_plus_the_mean_pair_term(M):
    info, batch = INFOS[M], BATCHES[M]
    trainer, out = one_step("MBSD", {}, info, batch, lr=0.0)
    model, y = trainer.model, batch["label"]
    with torch.no_grad():
        features = model.encode(batch)
        z = model.fuse(features)
        unimodal = [model.unimodal_logits(features, i) for i in range(M)]
    supervised = F.cross_entropy(z, y) + sum(F.cross_entropy(u, y) for u in unimodal)
    extra, reference = float(out.loss - supervised), reference_distillation(unimodal, y)
    assert reference > 0
    # the float32 loss (about 3) resolves its small distillation part to a few 1e-7
    assert extra == pytest.approx(reference, abs=2e-6)
    logged = trainer.method.log.flush()
    assert set(logged) == {"w_mean", "w_active", "loss_rs", "loss_kl"}
    assert logged["loss_rs"] >= 0 and logged["loss_kl"] >= 0
    assert logged["loss_rs"] + logged["loss_kl"] == pytest.approx(reference, rel=1e-4)
    weights = torch.stack([reference_pair(unimodal[a], unimodal[b], y)[0]
                           for a, b in itertools.combinations(range(M), 2)])
    assert logged["w_mean"] == pytest.approx(float(weights.mean()), rel=1e-5)
    assert logged["w_active"] == pytest.approx(float((weights > 0).double().mean()))
    assert 0 < logged["w_active"] <= 1


def test_identical_unimodal_logits_give_zero_weights_and_ce_plus_twice_the_unimodal_ce():
    """Two modalities with the same encoder, the same head block and the same input."""
    info = toy_info(dims=(5, 5), num_classes=4)
    trainer = trainer_for(info, {})
    model = trainer.model
    model.encoders["b"].load_state_dict(model.encoders["a"].state_dict())
    with torch.no_grad():
        d = model.encoders["a"].out_dim
        model.head.fc.weight[:, d:] = model.head.fc.weight[:, :d]
    batch = toy_batch(info, n=16, seed=3)
    batch["b"] = batch["a"].clone()
    out = trainer.method.train_step(trainer, batch, StepInfo(0, 0, 1, 0, active=True))
    with torch.no_grad():
        features = model.encode(batch)
        za = model.unimodal_logits(features, 0)
        assert torch.equal(za, model.unimodal_logits(features, 1))
        expected = F.cross_entropy(model.fuse(features), batch["label"]) \
            + 2 * F.cross_entropy(za, batch["label"])
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)
    logged = trainer.method.log.flush()
    assert logged["w_mean"] == 0 and logged["w_active"] == 0
    assert logged["loss_rs"] == 0 and logged["loss_kl"] == 0


def test_the_unimodal_terms_use_the_loss_accessor_so_the_head_and_encoders_get_their_gradients():
    info, batch = INFOS[3], BATCHES[3]
    base, _ = one_step("Baseline", {}, info, batch, lr=0.0)
    mine, _ = one_step("MBSD", {}, info, batch, lr=0.0)
    for name, grad in grads_of(mine.model).items():
        assert not torch.equal(grad, grads_of(base.model)[name]), name


# -- hyper-parameters and facts ------------------------------------------------------------------

def test_window_defaults_aliases_and_class_facts():
    p = method_params(MBSD, {})
    assert isinstance(p, WindowParams) and (p.start, p.end) == (0, 80)
    p = method_params(MBSD, {"modulation_starts": 2, "modulation_ends": 5})
    assert (p.start, p.end) == (2, 5)
    with pytest.raises(SpecError, match="after end"):
        method_params(MBSD, {"start": 5, "end": 2})
    with pytest.raises(SpecError, match="MBSD"):
        method_params(MBSD, {"alpha": 1.0})
    cls = METHODS.get("mbsd")
    assert cls is MBSD and cls.family is Family.OBJECTIVE and cls.windowed
    assert cls.min_modalities == 2 and not cls.extra_passes and cls.default_evaluation()


# -- whole runs -----------------------------------------------------------------------------------

SMALL = {"dataset.options": {"subsample_per_class": 20}, "progress": False}


def test_the_cli_run_writes_a_record_with_the_method_log(tmp_path, capsys):
    out = tmp_path / "mbsd"
    argv = ["run", "--method", "MBSD", "--dataset", "mfeat", "--epochs", "2", "--modulation_starts",
            "1", "--set", "dataset.options.subsample_per_class=20", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "record.json").read_text())
    first, second = (h["method"] for h in record["history"])
    assert first == {"active": 0.0}  # the plain step logs nothing of its own
    assert set(second) == {"active", "w_mean", "w_active", "loss_rs", "loss_kl"}
    assert second["active"] == 1.0
    assert 0 <= second["w_mean"] < 1 and 0 <= second["w_active"] <= 1
    assert second["loss_rs"] >= 0 and second["loss_kl"] >= 0
    assert record["metrics"]["active_epochs"] == 1


def test_a_three_modality_run_logs_the_pair_averages(tmp_path):
    result = bbench.run("MBSD", "mfeat-fac-fou-mor", epochs=1, output_root=str(tmp_path), **SMALL)
    logged = result.history[0]["method"]
    assert set(logged) == {"active", "w_mean", "w_active", "loss_rs", "loss_kl"}
    assert 0 <= logged["w_mean"] < 1 and 0 < logged["w_active"] <= 1
    assert logged["loss_rs"] >= 0 and logged["loss_kl"] >= 0
    assert {"acc_fac", "acc_fou", "acc_mor"} <= set(result.metrics)


def test_an_interrupted_run_resumed_ends_like_the_uninterrupted_one(tmp_path):
    fast = {"epochs": 3, "start": 1, "output_root": str(tmp_path), **SMALL}
    whole = bbench.run("MBSD", "mfeat", **fast)
    resumed = interrupted_and_resumed("MBSD", "mfeat", 0, **fast)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    for key in ("acc", "f1", "train_flops", "best_epoch"):
        assert resumed.metrics[key] == whole.metrics[key], key
