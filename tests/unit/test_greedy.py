"""Greedy (methods.md §5.4): MMTM blocks between encoder stages, the learning-speed
bookkeeping and curation; the properties a correct implementation satisfies, the pitfalls
it must not have, and whole runs through `bbench.run` (logs, miniatures, Shapley by
brute force, FLOPs, resume)."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import bbench
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import DataInfo, TensorMultimodalDataset, move_batch
from bbench.data.registry import build_datamodule
from bbench.engine.evaluate import eval_loader
from bbench.engine.flops import count_forward_flops
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.facts import Family
from bbench.methods.greedy import Greedy, balance_gaps, caring_choice
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.metrics.shapley import choose_path
from bbench.models.mmtm import MMTM, MMTMModel, channel_gate, channel_squeeze
from bbench.models.modes import eval_mode
from bbench.testing import make_miniature
from bbench.testing.methods import toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed

CPU = torch.device("cpu")
NAMES = {2: ("a", "b"), 3: ("a", "b", "c")}
DIMS = {2: (5, 3), 3: (5, 3, 4)}
K = 4
BOTH = pytest.mark.parametrize("M", [2, 3])
SMALL = {"dataset.options": {"subsample_per_class": 20}, "progress": False}


def setup(M: int = 2, params: dict | None = None, hidden: dict | None = None, n: int = 16,
          seed: int = 0) -> tuple[Trainer, Greedy, dict]:
    """(trainer, method, batch): Greedy on a toy problem with small MLP encoders."""
    info = toy_info(DIMS[M], K, NAMES[M])
    widths = hidden or {}
    spec = ModelSpec(encoders={m: EncoderSpec("mlp", {"hidden": widths.get(m, (6, 4))})
                               for m in NAMES[M]})
    method = build_method("Greedy", params or {}, RunContext(info, spec, 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    batch = toy_batch(info, n, seed)
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    train = TrainSpec(optimizer=OptimizerSpec(lr=0.1), epochs=1, progress=False)
    trainer = Trainer(train, TrainingData(info, split, split), method, model, count_flops=False)
    return trainer, method, batch


def step(trainer: Trainer, batch: dict, epoch: int = 0, t: int = 0):
    method = trainer.method
    return method.train_step(trainer, batch, StepInfo(epoch, 0, 1, t, active=method.active(epoch)))


def excitation(model: MMTMModel, index: int) -> list[torch.nn.Parameter]:
    return model.excitation_parameters(index)


# -- the MMTM block ------------------------------------------------------------------------------

LAYOUTS = ("vector", "image", "clip", "tokens")


def stage_output(kind: str, B: int, C: int, g: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    """A stage output of the given layout and its (channel axis, frames per sample)."""
    if kind == "vector":
        return torch.randn(B, C, generator=g, dtype=torch.float64), (1, 1)
    if kind == "image":
        return torch.randn(B, C, 3, 2, generator=g, dtype=torch.float64), (1, 1)
    if kind == "clip":  # T = 3 frames folded into the batch, sample-major
        return torch.randn(B * 3, C, 2, 2, generator=g, dtype=torch.float64), (1, 3)
    return torch.randn(B, 4, C, generator=g, dtype=torch.float64), (-1, 1)


def reference_squeeze(kind: str, y: torch.Tensor, B: int) -> torch.Tensor:
    if kind == "vector":
        return y
    if kind == "image":
        return y.mean((2, 3))
    if kind == "clip":
        return y.view(B, 3, *y.shape[1:]).mean((1, 3, 4))
    return y.mean(1)


def reference_gate(kind: str, y: torch.Tensor, g: torch.Tensor, B: int) -> torch.Tensor:
    if kind == "vector":
        return y * g
    if kind == "image":
        return y * g[:, :, None, None]
    if kind == "clip":
        return (y.view(B, 3, *y.shape[1:]) * g[:, None, :, None, None]).view_as(y)
    return y * g[:, None, :]


@given(st.lists(st.tuples(st.sampled_from(LAYOUTS), st.integers(1, 6)), min_size=2, max_size=3),
       st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans())
@settings(max_examples=40, deadline=None)
def test_outside_curation_a_block_is_the_mmtm_formula(spec, B, ratio, seed, training):
    """F_m ⊙ sigmoid(W_m^ex ReLU(W_sq q + b_sq) + b_m^ex), q_m the per-sample mean over every
    non-channel axis (the frames of a folded clip included), in every layout."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    block = MMTM([c for _, c in spec], ratio).double().train(training)
    assert block.squeeze.out_features == 2 * sum(c for _, c in spec) // ratio
    pairs = [stage_output(kind, B, c, g) for kind, c in spec]
    ys, layouts = [p[0] for p in pairs], [p[1] for p in pairs]
    out, gate_means = block(ys, layouts)
    q = torch.cat([reference_squeeze(kind, y, B) for (kind, _), y in zip(spec, ys)], 1)
    a = torch.relu(q @ block.squeeze.weight.T + block.squeeze.bias)
    for i, ((kind, _), y) in enumerate(zip(spec, ys)):
        gate = torch.sigmoid(a @ block.excite[i].weight.T + block.excite[i].bias)
        torch.testing.assert_close(out[i], reference_gate(kind, y, gate, B))
        torch.testing.assert_close(gate_means[i], gate.float().mean())
        assert out[i].shape == y.shape


def test_for_two_dimensional_outputs_the_squeeze_is_the_identity():
    y = torch.randn(7, 5)
    assert torch.equal(channel_squeeze(y, 1, 1), y)
    tokens = torch.randn(2, 3, 5)  # channel axis last: the mean over the 3 tokens
    torch.testing.assert_close(channel_squeeze(tokens, -1, 1), tokens.mean(1))
    shared = torch.rand(5)  # a [C] gate broadcasts over batch and every other axis
    torch.testing.assert_close(channel_gate(tokens, shared, -1, 1), tokens * shared)


def test_running_means_are_each_modalitys_own_mean_gate_and_only_in_training():
    """Pitfalls: the second modality's running gate updated with the first one's gate, and
    running gates moved by evaluation forwards."""
    torch.manual_seed(0)
    block = MMTM([4, 4], 2).train()
    g = torch.Generator().manual_seed(1)
    history: list[list[torch.Tensor]] = []
    for _ in range(3):
        ys = [torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * 3 + 1]
        history.append([gate.mean(0) for gate in block.gates(ys)])
        block(ys, [(1, 1), (1, 1)])
    assert int(block.updates) == 3
    for i in range(2):
        want = torch.stack([h[i] for h in history]).mean(0)
        torch.testing.assert_close(block.mean_gate(i), want)
    assert not torch.allclose(block.mean_gate(0), block.mean_gate(1))
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with eval_mode(block):
        block([torch.randn(6, 4), torch.randn(6, 4)], [(1, 1), (1, 1)])
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), k


@BOTH
def test_a_curated_block_gates_the_caring_modality_with_its_updated_running_mean(M):
    torch.manual_seed(0)
    block = MMTM([3] * M, 2).double().train()
    g = torch.Generator().manual_seed(2)
    block([torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(M)], [(1, 1)] * M)
    old = [block.mean_gate(i).clone() for i in range(M)]
    ys = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(M)]
    live = block.gates(ys)
    for c in range(M):
        trial = copy.deepcopy(block)
        out, _ = trial(ys, [(1, 1)] * M, caring=c)
        updated = (old[c] + live[c].detach().float().mean(0)) / 2  # n = 1 earlier update
        torch.testing.assert_close(out[c], ys[c] * updated.double())
        for k in range(M):
            if k != c:
                torch.testing.assert_close(out[k], ys[k] * live[k])


# -- the model -------------------------------------------------------------------------------------

@BOTH
def test_in_curation_the_caring_features_do_not_depend_on_the_other_inputs(M):
    """The Jacobian of h_c with respect to x_k (k ≠ c) is exactly zero, while without
    curation it is not, and h_k still depends on x_c."""
    trainer, _, batch = setup(M)
    model = trainer.model.train()
    names = NAMES[M]

    def jacobian(out: int, wrt: int, caring: int | None) -> torch.Tensor:
        def h(x: torch.Tensor) -> torch.Tensor:
            return model.encode_gated({**batch, names[wrt]: x}, caring=caring)[0][out]
        return torch.autograd.functional.jacobian(h, batch[names[wrt]])

    for c in range(M):
        for k in range(M):
            if k == c:
                continue
            assert torch.count_nonzero(jacobian(c, k, caring=c)) == 0, (c, k)
            assert torch.count_nonzero(jacobian(c, k, caring=None)) > 0, (c, k)
            assert torch.count_nonzero(jacobian(k, c, caring=c)) > 0, (c, k)


@BOTH
def test_in_curation_the_caring_excitation_gets_exactly_zero_gradient(M):
    for c in range(M):
        trainer, method, batch = setup(M, {"window_size": 3})
        method.caring, method.remaining = c, 3
        step(trainer, batch)
        for k in range(M):
            grads = [p.grad for p in excitation(trainer.model, k)]
            if k == c:
                assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
            else:
                assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
        assert method.remaining == 2
        logged = method.log.flush()
        assert logged["curation_rate"] == 1.0 and "bdr_a" not in logged  # no bookkeeping
        assert [logged[f"caring_{m}"] for m in NAMES[M]] == [float(i == c) for i in range(M)]


@BOTH
def test_a_finite_perturbation_of_another_input_still_moves_the_caring_features_slightly(M):
    """Through the running mean, updated with this forward's live gate before it is used."""
    trainer, _, batch = setup(M)
    model = trainer.model.train()
    c, k = 0, M - 1
    g = torch.Generator().manual_seed(3)
    moved = {**batch, NAMES[M][k]: batch[NAMES[M][k]] + torch.randn(batch[NAMES[M][k]].shape, generator=g)}

    def change(caring: int | None) -> float:
        with torch.no_grad():
            h0 = copy.deepcopy(model).encode_gated(batch, caring=caring)[0][c]
            h1 = copy.deepcopy(model).encode_gated(moved, caring=caring)[0][c]
        return float((h1 - h0).abs().max())

    curated, live = change(c), change(None)
    assert 0 < curated < live


def test_encoders_of_different_depths_fuse_their_last_stages():
    """M-generic alignment: L = min_m |P_m| blocks, block ℓ after each modality's ℓ-th of its
    last L fusion points."""
    hidden = {"a": (6,), "b": (7, 5, 4), "c": (3, 2)}
    trainer, _, batch = setup(3, hidden=hidden)
    model = trainer.model
    assert model.points == ((0,), (2,), (1,))
    assert len(model.blocks) == 1 and model.blocks[0].channels == (6, 4, 2)
    features = model.encode(batch)
    assert [f.shape for f in features] == [(16, 6), (16, 4), (16, 2)]
    equal, _, _ = setup(2)
    assert equal.model.points == ((0, 1), (0, 1))
    assert [b.channels for b in equal.model.blocks] == [(6, 6), (4, 4)]


def test_resnet_stages_one_to_four_and_any_batch_size_on_frame_clips():
    """MMTM after layer1 … layer4 of ResNet18 on a spectrogram and a folded frame clip;
    pitfall: a batch size hard-coded in the clip reshape (every size works, and each sample's
    eval output is the one it gets alone)."""
    info = DataInfo("clips", ("audio", "visual"), 3, {"audio": (1, 16, 16), "visual": (2, 3, 16, 16)},
                    {"audio": torch.float32, "visual": torch.float32})
    spec = ModelSpec(encoders={"*": EncoderSpec("resnet18", {})})
    method = build_method("Greedy", {}, RunContext(info, spec, 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    assert model.points == ((1, 2, 3, 4), (1, 2, 3, 4))
    assert [b.channels for b in model.blocks] == [(64, 64), (128, 128), (256, 256), (512, 512)]
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(5, *info.input_shapes[m], generator=g) for m in info.modalities}
    with eval_mode(model), torch.no_grad():
        whole = model(batch)
        alone = torch.cat([model({m: batch[m][i:i + 1] for m in info.modalities}) for i in range(5)])
    torch.testing.assert_close(whole, alone, rtol=1e-4, atol=1e-5)
    for n in (2, 3):
        out = model.train()({m: batch[m][:n] for m in info.modalities})
        assert out.shape == (n, 3)


# -- bookkeeping and curation ------------------------------------------------------------------

@BOTH
def test_the_sums_are_the_relative_squared_gradients_of_both_paths(M):
    """Reference values: S_bypass,m = Σ‖∇θ‖²/Σ‖θ‖² over (W_m^ex, b_m^ex, W_sq, b_sq) of every
    block, S_main,m over enc(m), with the weights before the optimizer step."""
    trainer, method, batch = setup(M, {"alpha": 1e9})
    step(trainer, batch)
    _, fresh, _ = setup(M, {"alpha": 1e9})
    torch.manual_seed(0)
    before = {n: p.detach() for n, p in fresh.build_model().named_parameters()}
    grads = {n: p.grad for n, p in trainer.model.named_parameters()}
    blocks = range(len(trainer.model.blocks))

    def ratio(names: list[str]) -> float:
        g = sum(float(grads[n].double().pow(2).sum()) for n in names if grads[n] is not None)
        return g / sum(float(before[n].double().pow(2).sum()) for n in names)

    logged = method.log.flush()
    for i, m in enumerate(NAMES[M]):
        bypass = [f"blocks.{b}.{part}.{w}" for b in blocks for part in ("squeeze", f"excite.{i}")
                  for w in ("weight", "bias")]
        main = [n for n in before if n.startswith(f"encoders.{m}.")]
        assert float(method.s_bypass[i]) == pytest.approx(ratio(bypass), rel=1e-5)
        assert float(method.s_main[i]) == pytest.approx(ratio(main), rel=1e-5)
        assert logged[f"bdr_{m}"] == pytest.approx(math.log10(ratio(bypass) / ratio(main)), abs=1e-5)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), min_size=2, max_size=8),
       st.integers(1, 3), st.sampled_from([2, 3]))
@settings(max_examples=8, deadline=None)
def test_the_sums_never_decrease(schedule, window, M):
    trainer, method, _ = setup(M, {"alpha": 0.0, "window_size": window, "start": 1, "end": 2})
    last = (method.s_bypass.clone(), method.s_main.clone())
    for t, (epoch, seed) in enumerate(sorted(schedule)):
        step(trainer, toy_batch(trainer.data.info, 16, seed), epoch, t)
        assert torch.all(method.s_bypass >= last[0]) and torch.all(method.s_main >= last[1])
        last = (method.s_bypass.clone(), method.s_main.clone())


def test_for_two_modalities_d0_is_minus_d1_exactly():
    trainer, method, batch = setup(2)
    step(trainer, batch)
    logged = method.log.flush()
    assert logged["d_a"] == -logged["d_b"] and logged["d_a"] == logged["bdr_a"] - logged["bdr_b"]


@given(st.lists(st.floats(-30, 30), min_size=2, max_size=5))
@settings(max_examples=60, deadline=None)
def test_gaps_are_bdr_minus_the_mean_of_the_others(values):
    bdr = torch.tensor(values, dtype=torch.float64)
    M = len(values)
    d = balance_gaps(bdr)
    for m in range(M):
        others = [values[k] for k in range(M) if k != m]
        assert float(d[m]) == pytest.approx(values[m] - sum(others) / (M - 1), abs=1e-9)
    torch.testing.assert_close(d, M / (M - 1) * (bdr - bdr.mean()), rtol=0, atol=1e-9)
    if M == 2:
        assert float(d[0]) == -float(d[1]) == values[0] - values[1]


@given(st.lists(st.sampled_from([-0.5, -0.01, 0.0, 0.01, 0.5]), min_size=2, max_size=4),
       st.sampled_from([0.0, 0.001, 0.1]))
@settings(max_examples=60, deadline=None)
def test_the_caring_modality_is_the_largest_gap_beyond_epsilon_lowest_index_on_ties(gaps, alpha):
    d = torch.tensor(gaps, dtype=torch.float64)
    pick = int(caring_choice(d, alpha))
    if max(abs(v) for v in gaps) <= alpha:
        assert pick == -1
    else:
        assert pick == gaps.index(max(gaps))


@pytest.mark.parametrize("d0", [0.002, -0.002, 0.0005, -0.0005, 0.0])
def test_for_two_modalities_the_trigger_keeps_the_original_meaning_of_epsilon(d0):
    """Caring 0 if d_0 > ε, 1 if d_0 < −ε, nothing otherwise (ties included)."""
    d = balance_gaps(torch.tensor([d0, 0.0], dtype=torch.float64))
    assert int(caring_choice(d, 0.001)) == (0 if d0 > 0.001 else 1 if d0 < -0.001 else -1)


def curated_pattern(trainer: Trainer, method: Greedy, epochs: list[int]) -> list[bool]:
    """Whether each step of the given epochs was curated (its forward used a running mean)."""
    flags = []
    for t, epoch in enumerate(epochs):
        flags.append(method.active(epoch) and method.remaining > 0)
        step(trainer, toy_batch(trainer.data.info, 16, seed=t), epoch, t)
    return flags


@BOTH
def test_curation_lasts_exactly_window_size_steps_after_a_trigger(M):
    trainer, method, _ = setup(M, {"alpha": 0.0, "window_size": 3})
    flags = curated_pattern(trainer, method, [0] * 12)
    assert flags == [False, True, True, True] * 3
    logged = method.log.flush()
    assert logged["curation_rate"] == 9 / 12
    assert sum(logged[f"caring_{m}"] for m in NAMES[M]) == pytest.approx(1.0)


def test_curation_ends_with_the_window_and_never_starts_before_it():
    trainer, method, _ = setup(2, {"alpha": 0.0, "window_size": 5, "start": 1, "end": 1})
    flags = curated_pattern(trainer, method, [0, 0, 1, 1, 2, 2])
    assert flags == [False, False, False, True, False, False]
    assert method.remaining == 0
    # after the window: no bookkeeping, no curation
    before = method.s_bypass.clone()
    method.log.flush()
    step(trainer, toy_batch(trainer.data.info, 16, seed=9), 3, 6)
    assert torch.equal(method.s_bypass, before)
    assert set(method.log.flush()) == {"curation_rate"}


def test_bookkeeping_runs_before_the_window_and_the_step_is_baseline_on_the_model():
    trainer, method, batch = setup(2, {"alpha": 0.0, "start": 2})
    step(trainer, batch, epoch=0)
    assert method.remaining == 0 and torch.all(method.s_main > 0)
    logged = method.log.flush()
    assert {"bdr_a", "d_a", "curation_rate"} <= set(logged) and "gate_a" not in logged
    torch.manual_seed(0)
    plain = method.build_model().train()
    F.cross_entropy(plain(batch), batch["label"]).backward()
    for (name, p), q in zip(trainer.model.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # inside the window, an uncurated step has the very same gradients
    inside, inside_method, _ = setup(2, {"alpha": 0.0})
    step(inside, batch, epoch=0)
    for (name, p), q in zip(inside.model.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert inside_method.remaining == 5


@BOTH
def test_evaluation_uses_live_gates_and_honours_input_masking(M):
    trainer, method, batch = setup(M, {"alpha": 0.0})
    step(trainer, batch)
    assert method.remaining > 0  # curating: evaluation must ignore it
    model = trainer.model
    state = copy.deepcopy(model.state_dict())
    with eval_mode(model), torch.no_grad():
        fused, per_modality = method.eval_logits(model, batch)
        features = model.encode(batch)
        torch.testing.assert_close(fused, model.head(features))
        torch.testing.assert_close(sum(per_modality), fused, rtol=1e-5, atol=1e-6)
        present = [i != 0 for i in range(M)]
        masked, _ = method.eval_logits(model, batch, present)
        zeroed = {**batch, NAMES[M][0]: torch.zeros_like(batch[NAMES[M][0]])}
        torch.testing.assert_close(masked, model(zeroed))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not MMTMModel.separable and choose_path(method, model) == "masked-passes"


def test_hyper_parameters_defaults_ranges_aliases_and_facts():
    ctx = RunContext(toy_info(), ModelSpec(), 0, CPU)
    p = build_method("Greedy", {}, ctx).params
    assert (p.alpha, p.window_size, p.ratio, p.start, p.end) == (0.001, 5, 4, 0, 80)
    aliased = build_method("Greedy", {"modulation_starts": 2, "modulation_ends": 9}, ctx).params
    assert (aliased.start, aliased.end) == (2, 9)
    for bad in ({"alpha": -0.1}, {"window_size": 0}, {"ratio": 0}, {"start": 3, "end": 2}):
        with pytest.raises((ValueError, SpecError), match="Greedy|start"):
            build_method("Greedy", bad, ctx)
    assert Greedy.family is Family.FEED_FORWARD and Greedy.windowed
    assert Greedy.min_modalities == 2 and not Greedy.extra_passes
    with pytest.raises(ValueError, match="ratio"):
        MMTM([1, 1], 5)


def test_state_round_trip_continues_identically():
    trainer, method, batch = setup(3, {"alpha": 0.0, "window_size": 2})
    step(trainer, batch)
    state = method.state_dict()
    weights = copy.deepcopy(trainer.model.state_dict())
    assert set(state["extra"]) == {"s_bypass", "s_main", "caring", "remaining"}
    nxt = toy_batch(trainer.data.info, 16, seed=5)
    method.log.flush()
    step(trainer, nxt, t=1)
    again, restored, _ = setup(3, {"alpha": 0.0, "window_size": 2})
    restored.load_state_dict(state)
    again.model.load_state_dict(weights)
    step(again, nxt, t=1)
    assert (restored.caring, restored.remaining) == (method.caring, method.remaining)
    assert torch.equal(restored.s_bypass, method.s_bypass)
    assert restored.log.flush() == method.log.flush()
    for (name, a), b in zip(trainer.model.named_buffers(), again.model.buffers()):
        assert torch.equal(a, b), name  # the running mean gates and their update counts


# -- whole runs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, modalities", [("mfeat", 2), ("mfeat-fac-fou-mor", 3)])
def test_runs_on_mfeat_write_every_log(tmp_path, dataset, modalities):
    result = bbench.run("Greedy", dataset, epochs=2, batch_size=16, output_root=str(tmp_path),
                        **SMALL)
    names = [k[len("gate_"):] for k in result.history[0]["method"] if k.startswith("gate_")]
    assert len(names) == modalities
    curated = 0.0
    for epoch in result.history:
        logged = epoch["method"]
        assert logged["active"] == 1.0 and 0 <= logged["curation_rate"] <= 1
        for m in names:
            assert 0 < logged[f"gate_{m}"] < 1
            assert math.isfinite(logged[f"bdr_{m}"]) and math.isfinite(logged[f"d_{m}"])
        if logged["curation_rate"] > 0:
            curated += 1
            assert sum(logged[f"caring_{m}"] for m in names) == pytest.approx(1.0)
    assert curated > 0  # the default ε curates on mfeat
    assert result.extra["shapley"]["path"] == "masked-passes"


def brute_force_shapley(model: MMTMModel, loader, names: tuple[str, ...]) -> dict[str, float]:
    """φ_m as the mean marginal accuracy gain over all orderings, each subset evaluated by
    input masking with the model's eval path."""
    correct = {}
    with eval_mode(model), torch.no_grad():
        for r in range(len(names) + 1):
            for subset in itertools.combinations(names, r):
                hits, total = 0, 0
                for raw in loader:
                    batch = move_batch(raw, CPU)  # uint8 pixels normalised, as every consumer
                    masked = {**batch, **{m: torch.zeros_like(batch[m]) for m in names
                                          if m not in subset}}
                    hits += int((model(masked).argmax(1) == batch["label"]).sum())
                    total += int(batch["label"].numel())
                correct[frozenset(subset)] = hits / total
    orders = list(itertools.permutations(names))
    phi = {m: 0.0 for m in names}
    for order in orders:
        for j, m in enumerate(order):
            phi[m] += correct[frozenset(order[:j + 1])] - correct[frozenset(order[:j])]
    return {m: v / len(orders) for m, v in phi.items()}


@pytest.mark.slow
def test_cremad_miniature_trains_with_mmtm_between_resnet_stages_and_shapley_is_brute_force(tmp_path):
    mini = make_miniature("cremad", tmp_path / "cremad")
    overrides = dict(mini)
    result = bbench.run("Greedy", "cremad", output_root=str(tmp_path / "runs"), **overrides)
    assert {"bdr_audio", "d_visual", "curation_rate", "gate_audio"} <= set(result.history[0]["method"])
    spec = resolve_spec("Greedy", "cremad", overrides)
    data = build_datamodule(spec.dataset)
    method = build_method("Greedy", {}, RunContext(data.info, spec.model, 0, CPU))
    model = method.build_model()
    model.load_state_dict(torch.load(result.run_dir / "best_model.pt", weights_only=True))
    assert model.points == ((1, 2, 3, 4), (1, 2, 3, 4))
    assert int(model.blocks[0].updates) > 0  # running means trained, not evaluated
    loader = eval_loader(data.test, 4, data.collate)
    phi = brute_force_shapley(model, loader, data.info.modalities)
    assert result.extra["shapley"]["path"] == "masked-passes"
    for m, value in phi.items():
        assert result.metrics["shapley"][m] == pytest.approx(value, abs=1e-12)
    assert result.metrics["imbalance"] == pytest.approx(abs(phi["audio"] - phi["visual"]), abs=1e-12)


def test_cmu_mosei_miniature_builds_and_runs_three_sequence_modalities(tmp_path):
    mini = make_miniature("cmu_mosei", tmp_path / "mosei")
    spec = resolve_spec("Greedy", "cmu_mosei", mini)
    data = build_datamodule(spec.dataset)
    method = build_method("Greedy", {}, RunContext(data.info, spec.model, 0, CPU))
    torch.manual_seed(0)
    model = method.build_model()
    assert len(model.modalities) == 3 and model.points == ((1,), (1,), (1,))
    assert model.blocks[0].channels == (16, 16, 16)  # d_model, the last axis of (B, L, C)
    batch = next(iter(eval_loader(data.train, 4, data.collate)))
    logits = model.train()(batch)
    assert logits.shape == (4, data.info.num_classes) and torch.isfinite(logits).all()
    result = bbench.run("Greedy", "cmu_mosei", output_root=str(tmp_path / "runs"), **mini)
    assert {f"gate_{m}" for m in data.info.modalities} <= set(result.history[0]["method"])


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_the_same_sums_gates_and_curation(tmp_path):
    # 12 steps an epoch and a window of 4: steps 11–14 are curated, across the interruption.
    settings_ = {"epochs": 3, "batch_size": 16, "window_size": 4, **SMALL}
    whole = bbench.run("Greedy", "mfeat-fac-fou-mor", output_root=str(tmp_path / "a"), **settings_)
    resumed = interrupted_and_resumed("Greedy", "mfeat-fac-fou-mor", 0,
                                      output_root=str(tmp_path / "b"), **settings_)
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.metrics["acc"] == whole.metrics["acc"]
    assert resumed.metrics["shapley"] == whole.metrics["shapley"]
    assert whole.history[0]["method"]["curation_rate"] > 0


# -- FLOPs ---------------------------------------------------------------------------------------

def mmtm_flops_per_sample(model: MMTMModel, excluded: int | None = None) -> int:
    """Forward and backward of every block's linear layers per sample (2 FLOPs a multiply-add;
    every input needs a gradient, so a backward is twice its forward), less the backward of the
    `excluded` modality's excitation (it gets none while curated)."""
    total = 0
    for block in model.blocks:
        hidden, channels = block.squeeze.out_features, sum(block.channels)
        total += 3 * (2 * channels * hidden + 2 * hidden * channels)
        if excluded is not None:
            total -= 2 * 2 * hidden * block.channels[excluded]
    return total


@pytest.mark.slow
def test_training_flops_are_baselines_plus_the_mmtm_blocks(tmp_path):
    budget = {"epochs": 2, "batch_size": 16, "train.flops": "all", **SMALL}
    base = bbench.run("Baseline", "mfeat", output_root=str(tmp_path / "base"), **budget).metrics
    never = bbench.run("Greedy", "mfeat", output_root=str(tmp_path / "never"), alpha=1e9,
                       **budget)
    spec = resolve_spec("Greedy", "mfeat", budget)
    data = build_datamodule(spec.dataset)
    method = build_method("Greedy", {}, RunContext(data.info, spec.model, 0, CPU))
    model = method.build_model()
    batch = next(iter(eval_loader(data.val, 16, data.collate)))
    forward = count_forward_flops(lambda: model(batch)) / 16
    mmtm_forward = sum(4 * b.squeeze.out_features * sum(b.channels) for b in model.blocks)
    assert forward == base["forward_flops_per_sample"] + mmtm_forward
    assert never.metrics["forward_flops_per_sample"] == forward
    samples = never.metrics["train_samples"]
    assert samples == base["train_samples"]
    assert never.metrics["train_flops"] == base["train_flops"] + samples * mmtm_flops_per_sample(model)
    # with curation: a curated step's caring excitation has no backward
    cured = bbench.run("Greedy", "mfeat", output_root=str(tmp_path / "cured"), **budget)
    steps_per_epoch = samples // 2 // 16
    predicted = base["train_flops"]
    for epoch in cured.history:
        logged = epoch["method"]
        curated = round(logged["curation_rate"] * steps_per_epoch)
        predicted += (steps_per_epoch - curated) * 16 * mmtm_flops_per_sample(model)
        for i, m in enumerate(data.info.modalities):
            caring = round(logged.get(f"caring_{m}", 0.0) * curated)
            predicted += caring * 16 * mmtm_flops_per_sample(model, excluded=i)
    assert any(epoch["method"]["curation_rate"] > 0 for epoch in cured.history)
    assert cured.metrics["train_flops"] == predicted
    assert cured.metrics["train_flops"] > base["train_flops"]
