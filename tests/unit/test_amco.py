"""AMCo (methods.md §5.2): the properties a correct implementation satisfies, its pitfalls,
the model (L* after the split head, exact one-pass Shapley), and whole runs through
`bbench.run` (method log, FLOPs, resume)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import bbench
from bbench.cli import main as cli_main
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.evaluate import eval_loader
from bbench.engine.flops import count_forward_flops
from bbench.engine.trainer import Trainer
from bbench.methods.amco import (AMCo, AMCoHead, class_mask, dependence_shares,
                                 mask_probability)
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.metrics.shapley import choose_path, compute_shapley, masked_subset_logits
from bbench.models.modes import eval_mode
from bbench.testing.methods import grads_of, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed

CPU = torch.device("cpu")
K = 6
INFOS = {2: toy_info(dims=(7, 5), num_classes=K),
         3: toy_info(dims=(7, 5, 4), num_classes=K, names=("a", "b", "c"))}
BATCHES = {M: toy_batch(info, n=16) for M, info in INFOS.items()}
FEW = settings(max_examples=15, deadline=None)
TINY_MFEAT = {"progress": False, "dataset.options": {"subsample_per_class": 20}}


def setup(M: int, params: dict | None = None, lr: float = 0.1, fusion: str = "concat",
          batch: dict | None = None) -> tuple[Trainer, AMCo]:
    """A Trainer (no FLOP counting) around AMCo and its model, fixed initialisation."""
    info = INFOS[M]
    method = build_method("AMCo", params or {}, RunContext(info, ModelSpec(fusion=fusion), 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    batch = batch or BATCHES[M]
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    spec = TrainSpec(optimizer=OptimizerSpec(lr=lr), epochs=1, progress=False)
    return Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False), method


def set_state(method: AMCo, level: float, flags: list[bool]) -> None:
    method.load_extra_state({"level": level, "dependent": torch.tensor(flags)})


def identity_lstar(model) -> None:
    """L* = identity, so the training logits are Σ_m z̃_m itself."""
    with torch.no_grad():
        model.head.lstar.weight.copy_(torch.eye(K))
        model.head.lstar.bias.zero_()


def unmasked_logits(model, batch) -> torch.Tensor:
    """z_m [M, B, K] computed independently of the method, from the model as it is now."""
    features = model.encode(batch)
    return torch.stack([model.head.split.unimodal(features, i) for i in range(len(features))])


def dominate(model, M: int) -> None:
    """Make modality a hold most of the concatenated softmax mass (large z_a), the others
    still confident enough that an all-zero z_a would hold less than half of it."""
    head = model.head.split
    widths = [model.encoders[m].out_dim for m in model.modalities]
    with torch.no_grad():
        head.fc.weight[:, :widths[0]].mul_(40.0)
        head.fc.weight[:, widths[0]:].mul_(8.0)


def info_step(epoch: int, index: int = 0, active: bool = True) -> StepInfo:
    return StepInfo(epoch, index, 1, index, active=active)


# -- hyper-parameters, facts, model ---------------------------------------------------------

def test_class_facts_defaults_and_balancemm_names():
    assert AMCo.family is Family.FEED_FORWARD and AMCo.windowed and AMCo.min_modalities == 2
    assert AMCo.extra_passes is False  # one forward, one backward (M + 1 loss terms)
    p = build_method("AMCo", {}, RunContext(INFOS[2], ModelSpec(), 0, CPU)).params
    assert (p.sigma, p.eps, p.ramp, p.start, p.end) == (0.5, 0.3, 0.1, 0, 80)
    p = build_method("AMCo", {"modulation_starts": 2, "modulation_ends": 5},
                     RunContext(INFOS[2], ModelSpec(), 0, CPU)).params
    assert (p.start, p.end) == (2, 5)


@pytest.mark.parametrize("params", [{"sigma": 0.0}, {"eps": 0.0}, {"eps": -1.0}, {"ramp": -0.1},
                                    {"sigma": float("nan")}, {"start": 3, "end": 2}])
def test_out_of_range_hyper_parameters_are_rejected(params):
    with pytest.raises(SpecError, match="AMCo|start"):
        build_method("AMCo", params, RunContext(INFOS[2], ModelSpec(), 0, CPU))


@pytest.mark.parametrize("M", [2, 3])
def test_model_is_the_split_head_then_a_k_by_k_lstar_with_bias(M):
    trainer, _ = setup(M)
    model, batch = trainer.model, BATCHES[M]
    head = model.head
    assert isinstance(head, AMCoHead) and isinstance(head.lstar, torch.nn.Linear)
    assert head.lstar.weight.shape == (K, K) and head.lstar.bias.shape == (K,)
    z = unmasked_logits(model, batch)
    features = model.encode(batch)
    torch.testing.assert_close(z.sum(0), head.split(features), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(batch), head.lstar(z.sum(0)), rtol=1e-5, atol=1e-6)
    names = [n for n, _ in model.named_parameters()]
    assert names[-2:] == ["head.lstar.weight", "head.lstar.bias"]  # the optimizer covers L*
    assert all(n.startswith("encoders.") for n in names[:names.index("head.split.fc.weight")])


def test_additive_fusions_are_wrapped_and_others_refused():
    trainer, _ = setup(3, fusion="sum")
    z = unmasked_logits(trainer.model, BATCHES[3])
    torch.testing.assert_close(trainer.model(BATCHES[3]), trainer.model.head.lstar(z.sum(0)),
                               rtol=1e-5, atol=1e-6)
    for fusion in ("film", "gated"):
        with pytest.raises(SpecError, match="AMCo: fusion"):
            setup(2, fusion=fusion)


# -- Σ_m share_m = 1; σ >= 1 never flags and is the unmasked model ----------------------------

@FEW
@given(M=st.sampled_from([2, 3]), B=st.integers(1, 9), k=st.integers(2, 7),
       scale=st.floats(0.01, 30.0), seed=st.integers(0, 2**16))
def test_shares_sum_to_one_and_are_block_masses_of_the_concatenated_softmax(M, B, k, scale, seed):
    logits = torch.randn(M, B, k, generator=torch.Generator().manual_seed(seed)) * scale
    shares = dependence_shares(logits)
    assert shares.shape == (M,)
    assert float(shares.sum()) == pytest.approx(1.0, abs=1e-5)
    concat = torch.cat(list(logits), dim=1).double().softmax(1)  # [z_1, …, z_M] per sample
    expected = torch.stack([concat[:, i * k:(i + 1) * k].sum(1).mean() for i in range(M)])
    torch.testing.assert_close(shares.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("M", [2, 3])
def test_logged_shares_of_a_step_sum_to_one(M):
    trainer, method = setup(M)
    method.on_epoch_start(trainer, 1)
    method.train_step(trainer, BATCHES[M], info_step(1))
    logged = method.log.flush()
    assert sum(logged[f"share_{m}"] for m in INFOS[M].modalities) == pytest.approx(1.0, abs=1e-6)


@FEW
@given(sigma=st.floats(1.0, 10.0), M=st.sampled_from([2, 3]), scale=st.floats(0.1, 50.0),
       seed=st.integers(0, 2**16))
def test_sigma_at_least_one_never_flags_a_modality(sigma, M, scale, seed):
    logits = torch.randn(M, 5, K, generator=torch.Generator().manual_seed(seed)) * scale
    logits[0] += 1e3  # even a modality holding (almost) all the mass
    assert not (dependence_shares(logits) > sigma).any()


@pytest.mark.parametrize("M", [2, 3])
def test_sigma_one_training_never_masks_and_the_forward_is_the_unmasked_model(M):
    trainer, method = setup(M, {"sigma": 1.0})
    model, batch = trainer.model, BATCHES[M]
    dominate(model, M)  # modality a's share is near 1, still not > σ = 1
    assert dependence_shares(unmasked_logits(model, batch))[0] > 0.7
    for epoch in range(3):
        method.on_epoch_start(trainer, epoch)
        for j in range(4):
            out = method.forward(model, batch, info_step(epoch, j))
            # L*(Σ_m z_m) against L*(split(h)): the same terms summed in another order, so
            # float32 rounding of the O(1) terms (~1e-6 where they cancel to ~1e-2, seen on
            # an Intel Xeon with AVX-512) is allowed, far below any mask's effect (a masked class moves
            # the logits by O(1)).
            torch.testing.assert_close(out.logits, model(batch), rtol=1e-5, atol=1e-5)
            method.train_step(trainer, batch, info_step(epoch, j))
            assert not method.dependent.any()
    logged = method.log.flush()
    assert all(logged[f"dependent_{m}"] == 0.0 for m in INFOS[M].modalities)


# -- the ramp: p in [0, 1], non-decreasing within an epoch, 0 in epoch 0 ------------------------

def test_reference_mask_probability_and_count():
    p = mask_probability(0.15, 0.3)
    assert p == pytest.approx(0.707107, abs=1e-6)
    assert math.floor(p * 6) == 4
    assert (~class_mask(p, 6, torch.Generator().manual_seed(0))).sum() == 4
    assert mask_probability(0.0, 0.3) == 0.0 and mask_probability(0.3, 0.3) == 1.0
    assert mask_probability(5.0, 0.3) == 1.0


@FEW
@given(eps=st.floats(0.01, 2.0), ramp=st.floats(0.0, 1.0), epoch=st.integers(0, 6),
       steps=st.integers(1, 12), M=st.sampled_from([2, 3]))
def test_p_is_in_unit_interval_non_decreasing_within_an_epoch_and_zero_in_epoch_zero(
        eps, ramp, epoch, steps, M):
    info = INFOS[M]
    method = build_method("AMCo", {"eps": eps, "ramp": ramp}, RunContext(info, ModelSpec(), 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    batch = BATCHES[M]
    set_state(method, 7.0, [True] + [False] * (M - 1))  # state left over from an earlier epoch
    method.on_epoch_start(None, epoch)
    ps = []
    for j in range(steps):
        out = method.forward(model, batch, info_step(epoch, j))
        ps.append(out.extras["mask_p"])
        method.after_step(out, batch, info_step(epoch, j))
    assert ps[0] == 0.0  # every epoch starts unmasked
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert all(a <= b for a, b in zip(ps, ps[1:]))
    if epoch == 0:
        assert ps == [0.0] * steps
    for j, p in enumerate(ps):  # ℓ after j steps is j·e·ramp
        assert p == pytest.approx(mask_probability(j * epoch * ramp, eps), abs=1e-12)


def test_with_the_defaults_p_reaches_one_after_ceil_three_over_e_steps():
    method = build_method("AMCo", {}, RunContext(INFOS[2], ModelSpec(), 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    for epoch in (1, 2, 3, 4):
        method.on_epoch_start(None, epoch)
        ps = []
        for j in range(5):
            out = method.forward(model, BATCHES[2], info_step(epoch, j))
            ps.append(out.extras["mask_p"])
            method.after_step(out, BATCHES[2], info_step(epoch, j))
        first_one = ps.index(1.0)
        assert first_one == math.ceil(3 / epoch), (epoch, ps)


def test_epoch_start_resets_ramp_and_flags_only_in_active_epochs():
    method = build_method("AMCo", {"start": 2, "end": 3}, RunContext(INFOS[2], ModelSpec(), 0, CPU))
    set_state(method, 0.2, [True, False])
    method.on_epoch_start(None, 1)  # outside: untouched (and unused by the plain step)
    assert method.level == 0.2 and method.dependent.tolist() == [True, False]
    method.on_epoch_start(None, 2)
    assert method.level == 0.0 and method.dependent.tolist() == [False, False]


# -- the mask: ⌊pK⌋ positions of every dependent modality, the same for every sample --------------

@FEW
@given(p=st.floats(0.0, 1.0), k=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_class_mask_zeroes_exactly_floor_pk_positions(p, k, seed):
    kept = class_mask(p, k, torch.Generator().manual_seed(seed))
    assert kept.shape == (k,) and kept.dtype == torch.bool
    assert int((~kept).sum()) == math.floor(p * k)


def test_class_mask_positions_are_uniform():
    g = torch.Generator().manual_seed(0)
    masked = torch.stack([~class_mask(0.707107, 6, g) for _ in range(3000)]).double().mean(0)
    torch.testing.assert_close(masked, torch.full((6,), 4 / 6, dtype=torch.float64), atol=0.03,
                               rtol=0)


@FEW
@given(level=st.floats(0.0, 0.5), M=st.sampled_from([2, 3]), flags=st.integers(1, 7),
       seed=st.integers(0, 2**10))
def test_dependent_modalities_lose_the_same_floor_pk_positions_others_are_never_masked(
        level, M, flags, seed):
    dependent = [bool(flags >> i & 1) for i in range(M)]
    trainer, method = setup(M)
    model, batch = trainer.model, BATCHES[M]
    identity_lstar(model)
    method.generator.manual_seed(seed)
    set_state(method, level, dependent)
    out = method.forward(model, batch, info_step(1))
    z = unmasked_logits(model, batch)
    kept = out.extras["class_mask"]
    n = math.floor(mask_probability(level, 0.3) * K)
    assert kept.shape == (K,) and int((~kept).sum()) == n
    # Σ_m z̃_m: a dependent modality contributes nothing at the masked positions, everything at
    # the kept ones; a non-dependent modality contributes everywhere.
    expected = sum(z[i] * kept if dependent[i] else z[i] for i in range(M))
    torch.testing.assert_close(out.logits, expected, rtol=1e-6, atol=1e-6)
    others = sum((z[i] for i in range(M) if not dependent[i]), torch.zeros_like(z[0]))
    torch.testing.assert_close(out.logits[:, ~kept], others[:, ~kept], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("M", [2, 3])
def test_reference_k6_at_level_015_masks_four_positions_of_the_dependent_modality(M):
    trainer, method = setup(M)
    identity_lstar(trainer.model)
    set_state(method, 0.15, [True] + [False] * (M - 1))
    out = method.forward(trainer.model, BATCHES[M], info_step(1))
    assert out.extras["mask_p"] == pytest.approx(0.707107, abs=1e-6)
    assert int((~out.extras["class_mask"]).sum()) == 4
    z = unmasked_logits(trainer.model, BATCHES[M])
    rest = z[1:].sum(0)
    masked_positions = ~out.extras["class_mask"]
    torch.testing.assert_close(out.logits[:, masked_positions], rest[:, masked_positions])


# -- the loss always holds Σ_m CE(z_m) of the unmasked logits --------------------------------

@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("level", [0.0, 0.15, 1.0])
def test_loss_is_ce_of_the_masked_fusion_plus_unmasked_unimodal_ces(M, level):
    trainer, method = setup(M)
    model, batch = trainer.model, BATCHES[M]
    set_state(method, level, [True] + [False] * (M - 1))
    out = method.forward(model, batch, info_step(2))
    loss = method.loss(out, batch, info_step(2))
    z = unmasked_logits(model, batch)
    kept = out.extras["class_mask"].to(z.dtype)
    fused = model.head.lstar(z[0] * kept + z[1:].sum(0))
    labels = batch["label"]
    expected = F.cross_entropy(fused, labels) + sum(F.cross_entropy(z[i], labels) for i in range(M))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# -- pitfalls -----------------------------------------------------------------------------------

@FEW
@given(B=st.sampled_from([1, 3, 5, 7]), M=st.sampled_from([2, 3]), seed=st.integers(0, 100))
def test_pitfall_the_mask_is_one_k_vector_for_any_batch_size(B, M, seed):
    """Not a [2, K] mask: batches of any size (odd, 1) are masked, all samples alike."""
    batch = toy_batch(INFOS[M], n=B, seed=seed)
    trainer, method = setup(M, batch=batch)
    identity_lstar(trainer.model)
    set_state(method, 0.15, [True] * M)  # every modality dependent: Σ_m z̃_m = (Σ_m z_m) ⊙ μ
    out = method.forward(trainer.model, batch, info_step(1))
    kept = out.extras["class_mask"]
    assert kept.shape == (K,)
    assert out.logits.shape == (B, K)
    assert torch.all(out.logits[:, ~kept] == 0)
    z = unmasked_logits(trainer.model, batch)
    torch.testing.assert_close(out.logits[:, kept], z.sum(0)[:, kept], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("M", [2, 3])
def test_pitfall_shares_come_from_the_unmasked_logits_so_flags_survive_saturation(M):
    trainer, method = setup(M, lr=0.0)  # lr 0: every step sees the initial weights
    model, batch = trainer.model, BATCHES[M]
    dominate(model, M)
    with torch.no_grad():
        z = unmasked_logits(model, batch)
    expected = dependence_shares(z)
    assert expected[0] > 0.5
    # the pitfall's shares, from the masked logits (all of a's are 0 once p = 1), turn a off
    assert dependence_shares(torch.stack([torch.zeros_like(z[0]), *z[1:]]))[0] < 0.5
    method.on_epoch_start(trainer, 5)
    set_state(method, 10.0, [True] + [False] * (M - 1))  # p = 1: a's fused-path logits all 0
    for j in range(3):
        out = method.train_step(trainer, batch, info_step(5, j)).out
        assert out.extras["mask_p"] == 1.0 and not out.extras["class_mask"].any()
        torch.testing.assert_close(out.extras["shares"], expected)
        assert method.dependent.tolist() == [True] + [False] * (M - 1)


@pytest.mark.parametrize("M", [2, 3])
def test_pitfall_a_fully_masked_modality_still_learns_from_its_unmasked_unimodal_ce(M):
    trainer, method = setup(M)
    model, batch = trainer.model, BATCHES[M]
    method.on_epoch_start(trainer, 3)
    set_state(method, 10.0, [True] + [False] * (M - 1))
    out = method.train_step(trainer, batch, info_step(3)).out
    assert not out.extras["class_mask"].any()
    got = {n: g for n, g in grads_of(model).items() if n.startswith("encoders.a.")}
    # reference: CE(z_a, y) alone from the same initialisation (the fused path gives a nothing)
    reference, _ = setup(M)
    ref = reference.model
    F.cross_entropy(unmasked_logits(ref, batch)[0], batch["label"]).backward()
    for name, grad in got.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, dict(ref.named_parameters())[name].grad, rtol=1e-5,
                                   atol=1e-7)


# -- flags update, window, evaluation, randomness -------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_flags_for_the_next_step_are_shares_above_sigma_and_the_ramp_advances_by_e_ramp(M):
    trainer, method = setup(M, {"sigma": 0.3, "ramp": 0.05})
    method.on_epoch_start(trainer, 4)
    out = method.train_step(trainer, BATCHES[M], info_step(4)).out
    assert torch.equal(method.dependent, out.extras["shares"] > 0.3)
    assert method.level == pytest.approx(4 * 0.05)


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_the_step_is_the_plain_step_on_the_method_model(M):
    trainer, method = setup(M, {"start": 2})
    set_state(method, 10.0, [True] + [False] * (M - 1))
    method.on_epoch_start(trainer, 1)
    draws = method.generator.get_state()
    step = method.train_step(trainer, BATCHES[M], info_step(1, active=False))
    reference, _ = setup(M)
    loss = F.cross_entropy(reference.model(BATCHES[M]), BATCHES[M]["label"])
    loss.backward()
    assert torch.equal(step.loss, loss.detach())
    mine, ref = grads_of(trainer.model), grads_of(reference.model)
    assert mine.keys() == ref.keys()
    for name in mine:
        assert torch.equal(mine[name], ref[name]), name
    assert torch.equal(method.generator.get_state(), draws)  # no mask drawn
    assert method.level == 10.0 and method.log.flush() == {}  # no flags, no ramp, no log


@pytest.mark.parametrize("M", [2, 3])
def test_evaluation_is_unmasked_lstar_of_the_sum_and_per_modality_z_m(M):
    trainer, method = setup(M)
    model, batch = trainer.model, BATCHES[M]
    set_state(method, 10.0, [True] * M)
    with eval_mode(model), torch.no_grad():
        fused, per_modality = method.eval_logits(model, batch)
        z = unmasked_logits(model, batch)
        torch.testing.assert_close(fused, model.head.lstar(z.sum(0)), rtol=1e-5, atol=1e-6)
        for i in range(M):
            torch.testing.assert_close(per_modality[i], z[i])


def test_masks_come_from_the_method_generator_only():
    trainer, method = setup(2)
    twin_trainer, twin = setup(2)
    for m in (method, twin):
        set_state(m, 0.15, [True, False])
    global_state = torch.get_rng_state()
    masks = [method.forward(trainer.model, BATCHES[2], info_step(1)).extras["class_mask"]
             for _ in range(5)]
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(1234)  # the global RNG has no say
    twins = [twin.forward(twin_trainer.model, BATCHES[2], info_step(1)).extras["class_mask"]
             for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(masks, twins))
    assert len({tuple(m.tolist()) for m in masks}) > 1


def test_state_round_trip_restores_ramp_flags_and_generator():
    trainer, method = setup(3)
    set_state(method, 0.25, [False, True, False])
    method.forward(trainer.model, BATCHES[3], info_step(1))  # advances the generator
    saved = method.state_dict()
    _, other = setup(3)
    other.load_state_dict(saved)
    assert other.level == 0.25 and other.dependent.tolist() == [False, True, False]
    assert torch.equal(other.generator.get_state(), method.generator.get_state())


# -- Shapley: the one-pass path equals brute-force masked evaluation ---------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_one_pass_shapley_equals_brute_force_masked_evaluation(M):
    info = INFOS[M]
    trainer, method = setup(M)
    model = trainer.model
    with torch.no_grad():  # a non-trivial L*
        model.head.lstar.weight.add_(torch.eye(K) * 2)
    data = toy_batch(info, n=64, seed=3)
    split = TensorMultimodalDataset({m: data[m] for m in info.modalities}, data["label"])
    loader = eval_loader(split, 16)
    assert choose_path(method, model) == "one-pass-linear"
    one_pass = compute_shapley(method, model, loader, CPU)
    masked = compute_shapley(method, model, loader, CPU, path="masked-passes")
    assert one_pass.path == "one-pass-linear" and masked.path == "masked-passes"
    assert one_pass.subset_accuracy == masked.subset_accuracy
    assert one_pass.values == pytest.approx(masked.values, abs=1e-12)
    # brute force by hand: every subset input-masked through the method's own evaluation
    with eval_mode(model), torch.no_grad():
        for s in range(1 << M):
            present = [bool(s >> m & 1) for m in range(M)]
            logits, _ = method.eval_logits(model, data, present)
            names = [m for m, p in zip(info.modalities, present) if p]
            key = "+".join(names) if names else "∅"
            acc = float((logits.argmax(1) == data["label"]).double().mean())
            assert one_pass.subset_accuracy[key] == pytest.approx(acc, abs=1e-12)
        # and the affine decomposition gives the masked logits themselves
        features = model.encode(data)
        absent = model.zero_input_features(data)
        contrib, bias = model.head.affine_contributions(features)
        absent_contrib, _ = model.head.affine_contributions(absent)
        masked_logits = masked_subset_logits(method, model, data)
        for s in range(1 << M):
            logits = bias + sum(contrib[m] if s >> m & 1 else absent_contrib[m, 0]
                                for m in range(M))
            torch.testing.assert_close(logits.expand_as(masked_logits[s]), masked_logits[s],
                                       rtol=1e-5, atol=1e-5)


# -- whole runs -------------------------------------------------------------------------------------

def test_end_to_end_run_logs_mask_p_dependence_and_shares(tmp_path):
    result = bbench.run("AMCo", "mfeat", epochs=3, output_root=str(tmp_path), **TINY_MFEAT)
    modalities = [k[len("acc_"):] for k in result.metrics if k.startswith("acc_")]
    assert modalities == ["fac", "mor"]
    history = [record["method"] for record in result.history]
    for e, logged in enumerate(history):
        assert logged["active"] == 1.0
        assert set(logged) == {"active", "mask_p", *(f"dependent_{m}" for m in modalities),
                               *(f"share_{m}" for m in modalities)}
        assert 0.0 <= logged["mask_p"] <= 1.0
        assert sum(logged[f"share_{m}"] for m in modalities) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= logged[f"dependent_{m}"] <= 1.0 for m in modalities)
    assert history[0]["mask_p"] == 0.0  # epoch 0 never masks
    # 200 samples, batch 64, drop_last: 3 steps an epoch, ℓ = 0, e·0.1, 2·e·0.1
    for e in (1, 2):
        expected = sum(mask_probability(j * e * 0.1, 0.3) for j in range(3)) / 3
        assert history[e]["mask_p"] == pytest.approx(expected, abs=1e-9)
    assert result.extra["shapley"]["path"] == "one-pass-linear"


def test_cli_run_writes_a_record_with_the_method_log(tmp_path):
    out = tmp_path / "amco-run"
    assert cli_main(["run", "--method", "AMCo", "--dataset", "mfeat", "--epochs", "2",
                     "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "record.json").read_text())
    logged = record["history"][-1]["method"]
    for key in ("mask_p", "dependent_fac", "dependent_mor", "share_fac", "share_mor", "active"):
        assert key in logged


def test_an_interrupted_run_resumed_ends_like_the_uninterrupted_one(tmp_path):
    fast = {"epochs": 3, "output_root": str(tmp_path), **TINY_MFEAT}
    whole = bbench.run("AMCo", "mfeat", **fast)
    resumed = interrupted_and_resumed("AMCo", "mfeat", 1, **fast)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.metrics["acc"] == whole.metrics["acc"]
    assert resumed.metrics["train_flops"] == whole.metrics["train_flops"]


def test_training_flops_are_baselines_plus_lstar_forward_and_backward(tmp_path):
    """L* (Linear K → K) forward and backward on every training sample is exactly what AMCo
    adds: the split head's M products cost what the concat head's one does, and the M
    unimodal cross-entropies, the softmax shares and the mask are element-wise (0 FLOPs)."""
    budget = {"epochs": 2, "batch_size": 16, "train.flops": "all", "output_root": str(tmp_path),
              **TINY_MFEAT}
    base = bbench.run("Baseline", "mfeat", **budget).metrics
    amco = bbench.run("AMCo", "mfeat", **budget).metrics
    classes = 10
    lstar = torch.nn.Linear(classes, classes)
    x = torch.zeros(16, classes, requires_grad=True)
    forward = count_forward_flops(lstar, x) / 16
    assert forward == 2 * classes * classes
    out = lstar(x)
    counter = FlopCounterMode(display=False)
    with counter:
        out.backward(torch.ones_like(out))
    backward = counter.get_total_flops() / 16  # input and weight gradients
    assert backward == 4 * classes * classes
    assert amco["train_samples"] == base["train_samples"]
    assert amco["train_flops_reused"] == 0 and base["train_flops_reused"] == 0  # every step counted
    excess = amco["train_flops"] - base["train_flops"]
    assert excess == amco["train_samples"] * (forward + backward)
    assert amco["train_flops_by_region"]["epoch_start"] == 0
