"""PMR (methods.md §7.3): the properties a correct implementation satisfies, and its pitfalls."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bbench
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec
from bbench.methods.base import ForwardOut, RunContext
from bbench.methods.facts import Family
from bbench.methods.pmr import (PMR, ClassSums, prototype_logits, prototype_scores,
                                prototype_weights, updated_prototypes)
from bbench.methods.registry import build_method
from bbench.testing.resume import interrupted_and_resumed
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info

CPU = torch.device("cpu")
INFOS = {2: toy_info(dims=(6, 4), num_classes=3),
         3: toy_info(dims=(6, 4, 5), num_classes=3, names=("a", "b", "c"))}
# one_step trains with batch_size 64 (drop_last): 64 samples give one batch, so n_p = 1
BATCHES = {M: toy_batch(info, n=64) for M, info in INFOS.items()}
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_method(info, **params) -> PMR:
    return build_method("PMR", params, RunContext(info, ModelSpec(), 0, CPU))


def random_case(M: int, seed: int, B: int = 16, K: int = 4):
    """Features h_m [B, d_m], prototypes P_m [K, d_m], labels, fused logits z (all float32)."""
    g = torch.Generator().manual_seed(seed)
    dims = [3 + (m % 3) for m in range(M)]
    features = [torch.randn(B, d, generator=g) * (1 + m) for m, d in enumerate(dims)]
    prototypes = [torch.randn(K, d, generator=g) for d in dims]
    labels = torch.randint(0, K, (B,), generator=g)
    logits = torch.randn(B, K, generator=g)
    return features, prototypes, labels, logits


def pmr_loss(method: PMR, features, prototypes, labels, logits):
    method.prototypes = [p.clone() for p in prototypes]
    out = ForwardOut(None, features, logits)
    loss = method.loss(out, {"label": labels}, None)
    return loss, out


def explicit_distances(h: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """‖h_i − P_c‖₂ by broadcasting (an independent check of the cdist path)."""
    return (h.double()[:, None, :] - P.double()[None, :, :]).square().sum(-1).sqrt()


def class_means(model, batches, K):
    """Reference per-class means of h_m over `batches` (eval mode, no grad), and class counts."""
    model.eval()
    with torch.no_grad():
        feats = [model.encode(b) for b in batches]
    model.train()
    labels = torch.cat([b["label"] for b in batches])
    means = []
    for m in range(len(feats[0])):
        h = torch.cat([f[m] for f in feats]).double()
        means.append(torch.stack([h[labels == c].mean(0) if (labels == c).any()
                                  else torch.full((h.shape[1],), float("nan"), dtype=h.dtype)
                                  for c in range(K)]))
    return means, torch.bincount(labels, minlength=K), feats, labels


# -- class facts and hyper-parameters --------------------------------------------------------

def test_class_facts_and_defaults():
    assert PMR.family is Family.OPTIMIZATION and PMR.windowed and PMR.extra_passes
    assert PMR.min_modalities == 2
    p = make_method(INFOS[2]).params
    assert (p.alpha, p.momentum_coef, p.proto_fraction, p.start, p.end) == (0.6, 0.5, 0.1, 0, 80)


@pytest.mark.parametrize("params", [{"alpha": -0.1}, {"momentum_coef": 1.0},
                                    {"momentum_coef": -0.1}, {"proto_fraction": 0.0},
                                    {"proto_fraction": 1.5}, {"start": 5, "end": 2}])
def test_out_of_range_hyper_parameters_are_rejected(params):
    with pytest.raises((ValueError, SpecError)):
        make_method(INFOS[2], **params)


# -- alpha = 0 is Baseline; outside the window is Baseline --------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_zero_alpha_gives_the_baseline_loss_and_gradients_bit_for_bit(M):
    info, batch = INFOS[M], BATCHES[M]
    base, base_out = one_step("Baseline", {}, info, batch)
    pmr, pmr_out = one_step("PMR", {"alpha": 0.0}, info, batch)
    assert pmr.method.prototypes is not None  # the term was computed (with weight 0)
    assert torch.equal(base_out.loss, pmr_out.loss)
    gb, gp = grads_of(base.model), grads_of(pmr.model)
    assert gb.keys() == gp.keys()
    for name in gb:
        assert torch.equal(gb[name], gp[name]), name
    for a, b in zip(base.model.parameters(), pmr.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_plain_ce_and_no_prototype_pass(M):
    info, batch = INFOS[M], BATCHES[M]
    base, base_out = one_step("Baseline", {}, info, batch)
    pmr, pmr_out = one_step("PMR", {"alpha": 1.0, "start": 3}, info, batch, epoch=0)
    gb, gp = grads_of(base.model), grads_of(pmr.model)
    assert torch.equal(base_out.loss, pmr_out.loss)
    for name in gb:
        assert torch.equal(gb[name], gp[name]), name
    method = pmr.method
    state = method.generator.get_state()
    assert method.on_epoch_start(pmr, 0) is None
    assert method.prototypes is None  # no prototype pass outside the window
    assert torch.equal(method.generator.get_state(), state)
    assert "missing_classes" not in method.log.flush()


def test_positive_alpha_changes_only_the_encoder_gradients():
    info, batch = INFOS[2], BATCHES[2]
    base, _ = one_step("Baseline", {}, info, batch)
    pmr, _ = one_step("PMR", {"alpha": 1.0}, info, batch)
    gb, gp = grads_of(base.model), grads_of(pmr.model)
    changed = {n for n in gb if not torch.equal(gb[n], gp[n])}
    assert changed and all(n.startswith("encoders.") for n in changed)  # q does not touch the head


# -- which modality gets the term, and its value ---------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.05, 3.0))
def test_two_modalities_the_lower_scoring_one_gets_alpha_ce_of_negative_distance(seed, alpha):
    features, prototypes, labels, logits = random_case(2, seed)
    method = make_method(INFOS[2], alpha=alpha)
    loss, out = pmr_loss(method, features, prototypes, labels, logits)
    scores, beta = out.extras["prototype_scores"], out.extras["beta"]
    assume(bool(scores[0] != scores[1]))
    weak = int(scores.argmin())
    assert torch.equal(beta, torch.tensor([alpha if m == weak else 0.0 for m in range(2)]))
    q = -explicit_distances(features[weak], prototypes[weak])
    term = alpha * F.cross_entropy(q, labels)
    ce = F.cross_entropy(logits.double(), labels)
    torch.testing.assert_close(loss.double() - ce, term, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.05, 3.0))
def test_three_modalities_every_modality_below_the_maximum_gets_the_term(seed, alpha):
    features, prototypes, labels, logits = random_case(3, seed)
    method = make_method(INFOS[3], alpha=alpha)
    loss, out = pmr_loss(method, features, prototypes, labels, logits)
    scores, beta = out.extras["prototype_scores"], out.extras["beta"]
    below = [bool(s < scores.max()) for s in scores]
    assert torch.equal(beta, torch.tensor([alpha if b else 0.0 for b in below]))
    expected = F.cross_entropy(logits.double(), labels) + sum(
        alpha * F.cross_entropy(-explicit_distances(features[m], prototypes[m]), labels)
        for m in range(3) if below[m])
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("M", [2, 3])
def test_scores_are_sums_of_label_probabilities_and_create_no_gradient(M):
    features, prototypes, labels, _ = random_case(M, 7)
    live = [f.clone().requires_grad_(True) for f in features]
    q = prototype_logits(live, prototypes)
    assert all(qm.requires_grad for qm in q)  # live h_m: the term reaches the encoders
    scores = prototype_scores(q, labels)
    assert not scores.requires_grad
    for m in range(M):
        torch.testing.assert_close(q[m].double(), -explicit_distances(features[m], prototypes[m]),
                                   rtol=1e-5, atol=1e-5)
        p = (-explicit_distances(features[m], prototypes[m])).softmax(1)
        torch.testing.assert_close(scores[m].double(), p[torch.arange(len(labels)), labels].sum(),
                                   rtol=1e-5, atol=1e-5)


# -- ties -----------------------------------------------------------------------------------

def test_weights_at_ties_give_nobody_the_term():
    assert prototype_weights(torch.tensor([1.5, 1.5]), 0.6).tolist() == [0.0, 0.0]
    assert prototype_weights(torch.tensor([2.0, 2.0, 2.0]), 0.6).tolist() == [0.0, 0.0, 0.0]
    assert prototype_weights(torch.tensor([1.0, 2.0, 2.0]), 0.5).tolist() == [0.5, 0.0, 0.0]
    assert prototype_weights(torch.tensor([1.0, 3.0, 2.0]), 0.5).tolist() == [0.5, 0.0, 0.5]


@pytest.mark.parametrize("M", [2, 3])
def test_equal_prototype_scores_add_no_term_to_the_loss(M):
    info = toy_info(dims=(4,) * M, num_classes=3, names=tuple("abc"[:M]))
    _, _, labels, logits = random_case(1, 3, K=3)
    h = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    P = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    method = make_method(info, alpha=1.0)
    loss, out = pmr_loss(method, [h.clone() for _ in range(M)], [P] * M, labels, logits)
    assert len(set(out.extras["prototype_scores"].tolist())) == 1
    assert out.extras["beta"].tolist() == [0.0] * M
    assert torch.equal(loss, F.cross_entropy(logits, labels))


# -- translation invariance ------------------------------------------------------------------

@SETTINGS
@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(-20.0, 20.0), tseed=st.integers(0, 2**31 - 1))
def test_translating_features_and_prototypes_changes_nothing(M, seed, scale, tseed):
    features, prototypes, labels, logits = random_case(M, seed)
    g = torch.Generator().manual_seed(tseed)
    shifts = [scale * torch.randn(f.shape[1], generator=g) for f in features]
    info = INFOS[M]
    loss, out = pmr_loss(make_method(info, alpha=0.7), features, prototypes, labels, logits)
    moved_loss, moved = pmr_loss(make_method(info, alpha=0.7),
                                 [f + t for f, t in zip(features, shifts)],
                                 [p + t for p, t in zip(prototypes, shifts)], labels, logits)
    for q, q_moved in zip(out.extras["prototype_logits"], moved.extras["prototype_logits"]):
        torch.testing.assert_close(q_moved, q, rtol=1e-4, atol=2e-4)
    s, s_moved = out.extras["prototype_scores"], moved.extras["prototype_scores"]
    torch.testing.assert_close(s_moved, s, rtol=1e-4, atol=1e-4)
    top = s.sort(descending=True).values
    assume(float(top[0] - top[1]) > 1e-3)  # β is a comparison: keep clear of near-ties
    assert torch.equal(moved.extras["beta"], out.extras["beta"])
    torch.testing.assert_close(moved_loss, loss, rtol=1e-4, atol=1e-4)


# -- prototypes -----------------------------------------------------------------------------

def _model_and_batches(M: int, sizes=(10, 10, 10), seed: int = 0, absent: int | None = None):
    info = INFOS[M]
    method = make_method(info, momentum_coef=0.3)
    torch.manual_seed(0)
    model = method.build_model()
    batches = []
    for j, n in enumerate(sizes):
        b = toy_batch(info, n=n, seed=seed + j)
        if absent is not None:
            b["label"] = torch.where(b["label"] == absent, (absent + 1) % info.num_classes,
                                     b["label"])
        batches.append(b)
    return method, model, batches


@pytest.mark.parametrize("M", [2, 3])
def test_prototypes_are_constants_equal_to_the_class_means_then_their_ema(M):
    method, model, batches = _model_and_batches(M)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.training
    method.compute_prototypes(model, iter(batches[:2]))  # any iterable of batches
    assert model.training  # the mode is restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    means, counts, _, _ = class_means(model, batches[:2], INFOS[M].num_classes)
    assert bool((counts > 0).all())
    assert len(method.prototypes) == M
    for P, ref in zip(method.prototypes, means):
        assert not P.requires_grad and P.grad_fn is None and P.dtype == torch.float32
        torch.testing.assert_close(P.double(), ref, rtol=1e-5, atol=1e-6)
    first = [p.clone() for p in method.prototypes]
    method.compute_prototypes(model, batches[2:])
    new_means, _, _, _ = class_means(model, batches[2:], INFOS[M].num_classes)
    for P, old, new in zip(method.prototypes, first, new_means):
        assert not P.requires_grad
        torch.testing.assert_close(P.double(), 0.7 * new + 0.3 * old.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("M", [2, 3])
def test_an_absent_class_is_never_nan(M):
    method, model, batches = _model_and_batches(M, absent=1)
    method.compute_prototypes(model, batches[:2])  # first computation: class 1 absent
    means, counts, feats, _ = class_means(model, batches[:2], INFOS[M].num_classes)
    assert int(counts[1]) == 0
    assert method.log.flush()["missing_classes"] == 1
    for m, P in enumerate(method.prototypes):
        assert bool(torch.isfinite(P).all())
        everything = torch.cat([f[m] for f in feats]).double().mean(0)
        torch.testing.assert_close(P[1].double(), everything, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(P[0].double(), means[m][0], rtol=1e-5, atol=1e-6)
    kept = [p.clone() for p in method.prototypes]
    method.compute_prototypes(model, batches[2:])  # later: class 1 absent again
    for P, old in zip(method.prototypes, kept):
        assert bool(torch.isfinite(P).all())
        assert torch.equal(P[1], old[1])  # the previous prototype, unchanged
        assert not torch.equal(P[0], old[0])


def test_updated_prototypes_pure_rule():
    sums = ClassSums([torch.tensor([[2.0, 4.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)],
                     torch.tensor([2, 0, 1]), 1)
    first = updated_prototypes(sums, None, 0.5)[0]
    torch.testing.assert_close(first, torch.tensor([[1.0, 2.0], [5 / 3, 7 / 3], [3.0, 3.0]]))
    old = [torch.tensor([[3.0, 0.0], [9.0, 9.0], [1.0, 1.0]])]
    second = updated_prototypes(sums, old, 0.25)[0]
    assert second.tolist() == [[1.5, 1.5], [9.0, 9.0], [2.5, 2.5]]


def test_an_empty_pass_leaves_the_prototypes_as_they_were():
    method, model, batches = _model_and_batches(2)
    assert method.compute_prototypes(model, []) is None and method.prototypes is None
    method.compute_prototypes(model, batches)
    kept = [p.clone() for p in method.prototypes]
    method.compute_prototypes(model, iter(()))
    assert all(torch.equal(a, b) for a, b in zip(method.prototypes, kept))


@pytest.mark.parametrize("fraction,expected", [(0.1, 1), (0.3, 3), (0.5, 5), (1.0, 10)])
def test_the_harness_pass_reads_the_first_n_p_batches_of_a_method_shuffled_loader(fraction,
                                                                                 expected):
    info = INFOS[2]
    batch = toy_batch(info, n=640 + 5)  # 10 full batches of 64 (drop_last, as training)
    trainer, _ = one_step("PMR", {"proto_fraction": fraction, "momentum_coef": 0.0}, info, batch)
    method = trainer.method
    state = method.generator.get_state()
    supplied = list(method.prototype_batches(trainer, 1))
    assert len(supplied) == expected
    assert all(b["label"].shape[0] == 64 for b in supplied)
    assert len({tuple(b["index"].tolist()) for b in supplied}) == expected
    assert not torch.equal(method.generator.get_state(), state)  # drawn from the method generator
    again = method.generator.get_state()
    method.generator.set_state(state)
    replay = list(method.prototype_batches(trainer, 1))
    assert [torch.equal(a["index"], b["index"]) for a, b in zip(supplied, replay)] == [True] * expected
    assert torch.equal(method.generator.get_state(), again)
    order = torch.cat([b["index"] for b in supplied])
    assert not torch.equal(order, torch.arange(len(order)))  # shuffled
    method.generator.set_state(state)
    previous = [p.clone() for p in method.prototypes]
    method.on_epoch_start(trainer, 1)
    means, counts, _, _ = class_means(trainer.model, supplied, info.num_classes)
    for P, ref, old in zip(method.prototypes, means, previous):
        ref = torch.where((counts > 0)[:, None], ref, old.double())  # μ = 0: the new means
        torch.testing.assert_close(P.double(), ref, rtol=1e-5, atol=1e-6)
        assert not P.requires_grad


def test_the_prototype_pass_depends_on_the_method_generator_not_the_global_rng():
    info = INFOS[2]
    batch = toy_batch(info, n=640)
    trainer, _ = one_step("PMR", {}, info, batch)
    method = trainer.method
    state = method.generator.get_state()
    torch.manual_seed(1)
    a = [b["index"] for b in method.prototype_batches(trainer, 1)]
    method.generator.set_state(state)
    torch.manual_seed(2)
    b = [b["index"] for b in method.prototype_batches(trainer, 1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# -- state (§1.12) --------------------------------------------------------------------------

def test_prototypes_survive_a_checkpoint_round_trip(tmp_path):
    info, batch = INFOS[3], BATCHES[3]
    trainer, _ = one_step("PMR", {}, info, batch)
    method = trainer.method
    path = tmp_path / "state.pt"
    torch.save({"method": method.state_dict()}, path)
    fresh = make_method(info)
    assert fresh.prototypes is None
    fresh.load_state_dict(torch.load(path, weights_only=True)["method"])
    assert len(fresh.prototypes) == 3
    for a, b in zip(fresh.prototypes, method.prototypes):
        assert torch.equal(a, b) and not a.requires_grad
    assert torch.equal(fresh.generator.get_state(), method.generator.get_state())
    # the next computation continues the moving average the same way
    extra = toy_batch(info, n=20, seed=5)
    method.compute_prototypes(trainer.model, [extra])
    fresh.compute_prototypes(trainer.model, [extra])
    assert all(torch.equal(a, b) for a, b in zip(fresh.prototypes, method.prototypes))
    # and "no prototypes yet" round-trips too
    empty = make_method(info)
    other = make_method(info)
    other.prototypes = [torch.zeros(3, 2)]
    other.load_state_dict(empty.state_dict())
    assert other.prototypes is None


# -- end to end -----------------------------------------------------------------------------

def test_end_to_end_logs_and_flops_above_baseline(tmp_path):
    result = bbench.run("PMR", "mfeat", epochs=2, progress=False, output_root=str(tmp_path))
    baseline = bbench.run("Baseline", "mfeat", epochs=2, progress=False,
                          output_root=str(tmp_path))
    modalities = [k[len("acc_"):] for k in result.metrics if k.startswith("acc_")]
    assert len(modalities) >= 2
    for record in result.history:
        logged = record["method"]
        assert logged["active"] == 1.0
        for m in modalities:
            assert 0 < logged[f"proto_score_{m}"] <= 1
            assert 0 <= logged[f"pce_{m}"] <= 1
            assert logged[f"pce_loss_{m}"] > 0
        assert logged["missing_classes"] >= 0
    assert result.metrics["train_flops"] > baseline.metrics["train_flops"]
    assert result.metrics["train_flops_by_region"]["epoch_start"] > 0  # the prototype passes


def test_an_interrupted_run_resumed_ends_like_the_uninterrupted_one(tmp_path):
    fast = {"epochs": 3, "progress": False, "output_root": str(tmp_path)}
    whole = bbench.run("PMR", "mfeat", **fast)

    resumed = interrupted_and_resumed("PMR", "mfeat", 1, **fast)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.metrics["train_flops"] == whole.metrics["train_flops"]
