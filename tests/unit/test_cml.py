"""CML (methods.md §6.4): the properties a correct implementation satisfies.

References are computed here independently of the method's code: partial logits from the
concat head's weight columns (or the head on feature-masked inputs), confidences and
cross-entropies in float64.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import bbench
from bbench.cli import main
from bbench.config.fields import SpecError
from bbench.config.specs import ModelSpec
from bbench.data.base import DataInfo
from bbench.methods.base import ForwardOut, RunContext, method_seed
from bbench.methods.cml import CML, calibration_terms, confidence_sums, partial_logits
from bbench.methods.facts import Family
from bbench.methods.loop import StepInfo
from bbench.methods.registry import build_method
from bbench.models.multimodal import MultimodalModel
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed

CPU = torch.device("cpu")
INFOS = {2: toy_info(dims=(6, 4), num_classes=3),
         3: toy_info(dims=(6, 4, 5), num_classes=3, names=("a", "b", "c"))}
BATCHES = {M: toy_batch(info, n=32) for M, info in INFOS.items()}
SETTINGS = settings(max_examples=25, deadline=None)
TINY = {"epochs": 2, "batch_size": 16, "progress": False,
        "dataset.options": {"subsample_per_class": 20}}


def make_method(info: DataInfo, fusion: str = "concat", **params) -> CML:
    return build_method("CML", params, RunContext(info, ModelSpec(fusion=fusion), 0, CPU))


def model_and_out(M: int, fusion: str = "concat", seed: int = 0, **params
                  ) -> tuple[CML, MultimodalModel, ForwardOut]:
    """A method, its freshly initialised model and a live forward on BATCHES[M]."""
    method = make_method(INFOS[M], fusion, **params)
    torch.manual_seed(seed)
    model = method.build_model()
    features = model.encode(BATCHES[M])
    return method, model, ForwardOut(model, features, model.fuse(features))


def column_blocks(model: MultimodalModel) -> list[torch.Tensor]:
    """W_m from the concat head's weight matrix, split by the encoders' output widths."""
    widths = [model.encoders[m].out_dim for m in model.modalities]
    return list(torch.split(model.head.fc.weight, widths, dim=1))


def reference_chain(model: MultimodalModel, features: list[torch.Tensor],
                    order: tuple[int, ...]) -> list[torch.Tensor]:
    """z^(j) = b + Σ_{m kept after j removals} W_m h_m, in float64, from the weight columns."""
    blocks = [w.double() for w in column_blocks(model)]
    bias = model.head.fc.bias.double()
    chain = []
    for j in range(len(order)):
        kept = order[j:]
        chain.append(bias + sum(features[m].double() @ blocks[m].t() for m in kept))
    return chain


def reference_loss(chain: list[torch.Tensor], labels: torch.Tensor, lam: float) -> torch.Tensor:
    """(1/M) Σ_j CE(z^(j), y) + λ Σ_j max(0, Σ_i conf^(j)_i − Σ_i conf^(j−1)_i)."""
    ce = sum(F.cross_entropy(z, labels) for z in chain) / len(chain)
    sums = [z.softmax(1).max(1).values.sum() for z in chain]
    hinge = sum(torch.clamp(b - a, min=0) for a, b in zip(sums[:-1], sums[1:]))
    return ce + lam * hinge


# -- class facts and hyper-parameters ----------------------------------------------------------

def test_class_facts_and_balancemm_defaults():
    assert CML.family is Family.OBJECTIVE and CML.windowed and not CML.extra_passes
    assert CML.min_modalities == 2
    p = make_method(INFOS[2]).params
    assert (p.lam, p.start, p.end) == (0.1, 0, 80)
    q = build_method("CML", {"modulation_starts": 2, "modulation_ends": 5, "lam": 0.3},
                     RunContext(INFOS[2], ModelSpec(), 0, CPU)).params
    assert (q.lam, q.start, q.end) == (0.3, 2, 5)


def test_a_negative_lambda_is_rejected_with_the_range():
    with pytest.raises(SpecError, match=r"CML: lam=-0.1 is out of range; need lam >= 0"):
        make_method(INFOS[2], lam=-0.1)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_a_head_without_modality_blocks_is_refused_when_the_model_is_built(fusion):
    with pytest.raises(SpecError, match=f"CML: fusion '{fusion}' mixes the modalities"):
        make_method(INFOS[2], fusion).build_model()


# -- property 1: C_j >= 0, and C_j = 0 whenever the batch-sum confidence does not rise -------

@SETTINGS
@given(sums=st.lists(st.floats(0.0, 64.0), min_size=2, max_size=5))
def test_calibration_terms_are_the_hinge_of_consecutive_sums(sums):
    s = torch.tensor(sums, dtype=torch.float64)
    terms = calibration_terms(s)
    assert terms.shape == (len(sums) - 1,)
    for j in range(1, len(sums)):
        c = float(terms[j - 1])
        assert c >= 0
        if sums[j] <= sums[j - 1]:
            assert c == 0.0
        else:
            assert c == sums[j] - sums[j - 1]


@SETTINGS
@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 30.0),
       perm=st.integers(0, 5))
def test_every_step_term_is_non_negative_and_zero_unless_the_batch_sum_rises(M, seed, scale,
                                                                            perm):
    method, model, out = model_and_out(M, seed=seed % 1000)
    with torch.no_grad():
        model.head.fc.weight.mul_(scale)  # from flat to saturated softmaxes
    out = ForwardOut(model, out.features, model.fuse(out.features))
    order = list(itertools.permutations(range(M)))[perm % math.factorial(M)]
    method.order = order
    method.loss(out, BATCHES[M], None)
    terms = out.extras["calibration_terms"].detach()
    sums = out.extras["confidence_sums"].detach()
    chain = reference_chain(model, out.features, order)
    ref_sums = torch.stack([z.softmax(1).max(1).values.sum() for z in chain])
    torch.testing.assert_close(sums.double(), ref_sums, rtol=1e-5, atol=1e-4)
    assert bool((terms >= 0).all())
    for j in range(1, M):
        if sums[j] <= sums[j - 1]:
            assert float(terms[j - 1]) == 0.0
        else:
            assert float(terms[j - 1]) == float(sums[j] - sums[j - 1])


def binary_logits(confidences: list[float]) -> torch.Tensor:
    """Two-class logits [0, log(p / (1 − p))]: sample i's top softmax probability is p_i > ½."""
    p = torch.tensor(confidences, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), (p / (1 - p)).log()], 1)


def test_the_hinge_is_on_the_batch_sum_not_per_sample():
    # sample 2's confidence rises by 0.2, but the batch sum falls from 1.4 to 1.3
    chain = [binary_logits([0.9, 0.5 + 1e-9]), binary_logits([0.6, 0.7])]
    sums = confidence_sums(chain)
    torch.testing.assert_close(sums, torch.tensor([1.4, 1.3]), rtol=0, atol=1e-6)
    assert calibration_terms(sums).tolist() == [0.0]
    # the batch sum rises from 1.1 to 1.3: C = 0.2
    rising = confidence_sums([binary_logits([0.6, 0.5 + 1e-9]), binary_logits([0.55, 0.75])])
    torch.testing.assert_close(calibration_terms(rising), torch.tensor([0.2]), rtol=0, atol=1e-6)


def test_gradients_flow_through_both_confidences():
    z0 = binary_logits([0.6, 0.55]).requires_grad_(True)
    z1 = binary_logits([0.7, 0.65]).requires_grad_(True)
    calibration_terms(confidence_sums([z0, z1])).sum().backward()
    r0, r1 = (z.detach().clone().requires_grad_(True) for z in (z0, z1))
    (r1.softmax(1).max(1).values.sum() - r0.softmax(1).max(1).values.sum()).backward()
    assert bool((z0.grad != 0).any()) and bool((z1.grad != 0).any())
    torch.testing.assert_close(z0.grad, r0.grad, rtol=1e-5, atol=1e-7)  # float32 statistics
    torch.testing.assert_close(z1.grad, r1.grad, rtol=1e-5, atol=1e-7)
    # no rise: the term is 0 and so is its gradient
    f0 = binary_logits([0.7, 0.65]).requires_grad_(True)
    f1 = binary_logits([0.6, 0.55]).requires_grad_(True)
    calibration_terms(confidence_sums([f0, f1])).sum().backward()
    assert not f0.grad.any() and not f1.grad.any()


# -- property 2: λ = 0 gives the average of the chain's CE terms ------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_zero_lambda_loss_and_gradients_are_those_of_the_mean_chain_ce(M):
    info, batch = INFOS[M], BATCHES[M]
    trainer, step_out = one_step("CML", {"lam": 0.0}, info, batch)
    order = trainer.method.order
    torch.manual_seed(0)  # the same initialisation as one_step's
    ref_model = make_method(info).build_model()
    features = ref_model.encode(batch)
    chain = [ref_model.fuse(features)] + [
        sum(features[m] @ w.t() for m, w in enumerate(column_blocks(ref_model)) if m in order[j:])
        + ref_model.head.fc.bias for j in range(1, M)]
    mean_ce = sum(F.cross_entropy(z, batch["label"]) for z in chain) / M
    torch.testing.assert_close(step_out.loss, mean_ce.detach(), rtol=1e-6, atol=1e-7)
    assert step_out.out.extras["calibration_terms"].shape == (M - 1,)
    mean_ce.backward()
    mine, ref = grads_of(trainer.model), grads_of(ref_model)
    assert mine.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(mine[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


@SETTINGS
@given(M=st.sampled_from([2, 3]), lam=st.floats(0.0, 5.0), seed=st.integers(0, 999),
       scale=st.floats(0.5, 20.0), perm=st.integers(0, 5))
def test_the_loss_is_the_mean_chain_ce_plus_lambda_times_the_hinges(M, lam, seed, scale, perm):
    method, model, out = model_and_out(M, seed=seed, lam=lam)
    with torch.no_grad():
        model.head.fc.weight.mul_(scale)
    out = ForwardOut(model, out.features, model.fuse(out.features))
    order = list(itertools.permutations(range(M)))[perm % math.factorial(M)]
    method.order = order
    loss = method.loss(out, BATCHES[M], None)
    expected = reference_loss(reference_chain(model, out.features, order), BATCHES[M]["label"], lam)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    if lam == 0.0:
        ce = sum(F.cross_entropy(z, BATCHES[M]["label"]) for z in out.extras["partial_logits"]) / M
        assert torch.equal(loss, ce)


# -- property 3: partial logits = fused logits minus W_m h_m, bias kept ----------------------

@pytest.mark.parametrize("M", [2, 3])
def test_each_removal_subtracts_exactly_that_modalitys_block_and_keeps_the_full_bias(M):
    method, model, out = model_and_out(M)
    blocks = column_blocks(model)
    for order in itertools.permutations(range(M)):
        chain = partial_logits(model.head, out.features, out.logits, order)
        assert len(chain) == M and chain[0] is out.logits  # z^(0) = z
        for j in range(1, M):
            m = order[j - 1]
            torch.testing.assert_close(chain[j], chain[j - 1] - out.features[m] @ blocks[m].t())
        keep = order[-1]
        last = out.features[keep] @ blocks[keep].t() + model.head.fc.bias  # full b, not b/M
        torch.testing.assert_close(chain[-1], last)
        for ref, z in zip(reference_chain(model, out.features, order), chain):
            torch.testing.assert_close(z.double(), ref, rtol=1e-5, atol=1e-5)
        assert all(z.requires_grad for z in chain)


def test_two_modalities_the_partial_logits_are_the_kept_modality_with_the_whole_bias():
    _, model, out = model_and_out(2)
    W = column_blocks(model)
    b = model.head.fc.bias
    for removed, keep in ((0, 1), (1, 0)):
        z1 = partial_logits(model.head, out.features, out.logits, (removed, keep))[1]
        torch.testing.assert_close(z1, out.features[keep] @ W[keep].t() + b)
        # not the split head's z_keep, which carries b / M only
        assert not torch.allclose(z1, model.unimodal_logits(out.features, keep))


@pytest.mark.parametrize("fusion", ["sum", "shared"])
@pytest.mark.parametrize("M", [2, 3])
def test_other_linear_heads_remove_the_modalitys_features_and_keep_every_bias(M, fusion):
    _, model, out = model_and_out(M, fusion)
    for order in itertools.permutations(range(M)):
        chain = partial_logits(model.head, out.features, out.logits, order)
        for j in range(1, M):
            removed = set(order[:j])
            masked = [torch.zeros_like(f) if i in removed else f for i, f in enumerate(out.features)]
            torch.testing.assert_close(chain[j], model.head(masked), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M", [2, 3])
def test_the_removal_order_is_the_same_for_every_step_of_an_epoch(M):
    info = INFOS[M]
    trainer, first = one_step("CML", {}, info, BATCHES[M])
    method = trainer.method
    trainer.method.log.flush()
    orders = [first.out.extras["order"]]
    for j in range(1, 6):
        step = method.train_step(trainer, toy_batch(info, n=32, seed=j), StepInfo(0, j, 6, j))
        orders.append(step.out.extras["order"])
    assert len(set(orders)) == 1 and sorted(orders[0]) == list(range(M))
    logged = method.log.flush()
    removed = {m for i, m in enumerate(info.modalities) if i != orders[0][-1]}
    for m in info.modalities:
        assert logged[f"removed_{m}"] == (1.0 if m in removed else 0.0)  # all steps or none


# -- the epoch-level procedure: π from the method generator at each active epoch's start ----

@pytest.mark.parametrize("M", [2, 3])
def test_each_active_epoch_draws_a_permutation_from_the_method_generator(M):
    info = INFOS[M]
    trainer, _ = one_step("CML", {}, info, BATCHES[M])
    method = trainer.method
    replay = torch.Generator().manual_seed(method_seed(0, "CML"))
    assert method.order == tuple(torch.randperm(M, generator=replay).tolist())  # epoch 0
    seen = {method.order}
    for epoch in range(1, 40):
        torch.manual_seed(epoch)  # the global RNG plays no part
        method.on_epoch_start(trainer, epoch)
        assert method.order == tuple(torch.randperm(M, generator=replay).tolist())
        seen.add(method.order)
    assert seen == set(itertools.permutations(range(M)))  # every order occurs, not a fixed one


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_the_step_is_baseline_and_nothing_is_drawn(M):
    info, batch = INFOS[M], BATCHES[M]
    base, base_out = one_step("Baseline", {}, info, batch)
    mine, mine_out = one_step("CML", {"start": 2, "lam": 1.0}, info, batch, epoch=0)
    assert torch.equal(base_out.loss, mine_out.loss)
    gb, gm = grads_of(base.model), grads_of(mine.model)
    assert gb.keys() == gm.keys()
    for name in gb:
        assert torch.equal(gb[name], gm[name]), name
    method = mine.method
    assert method.order is None and method.log.flush() == {}
    state = method.generator.get_state()
    method.on_epoch_start(mine, 1)
    assert method.order is None and torch.equal(method.generator.get_state(), state)
    method.on_epoch_start(mine, 2)  # the window opens
    assert method.order is not None and not torch.equal(method.generator.get_state(), state)


@pytest.mark.parametrize("M,seed,order,rises", [(2, 5, (1, 0), [True]), (2, 0, (0, 1), [False]),
                                                 (3, 1, (1, 0, 2), [True, False]),
                                                 (3, 0, (1, 0, 2), [False, False])])
def test_only_a_rise_of_the_batch_sum_adds_a_term_and_changes_the_gradients(M, seed, order, rises):
    """Cases found on these initialisations: a rise after some removals and none after others."""
    losses, grads, terms = [], [], None
    for lam in (0.0, 2.0):
        method, model, out = model_and_out(M, seed=seed, lam=lam)
        method.order = order
        loss = method.loss(out, BATCHES[M], None)
        loss.backward()
        losses.append(loss.detach())
        grads.append(grads_of(model))
        terms = out.extras["calibration_terms"].detach()
    assert [bool(c > 0) for c in terms] == rises
    torch.testing.assert_close(losses[1] - losses[0], 2.0 * terms.sum(), rtol=1e-5, atol=1e-7)
    changed = {n for n in grads[0] if not torch.equal(grads[0][n], grads[1][n])}
    if any(rises):
        assert "head.fc.weight" in changed and any(n.startswith("encoders.") for n in changed)
    else:
        assert not changed  # a zero hinge adds exactly nothing


# -- state (§1.12) -----------------------------------------------------------------------------

def test_the_permutation_survives_a_checkpoint_round_trip(tmp_path: Path):
    info = INFOS[3]
    trainer, _ = one_step("CML", {}, info, BATCHES[3])
    method = trainer.method
    path = tmp_path / "state.pt"
    torch.save({"method": method.state_dict()}, path)
    fresh = make_method(info)
    assert fresh.order is None
    fresh.load_state_dict(torch.load(path, weights_only=True)["method"])
    assert fresh.order == method.order
    assert torch.equal(fresh.generator.get_state(), method.generator.get_state())
    method.on_epoch_start(trainer, 1)
    fresh.on_epoch_start(trainer, 1)
    assert fresh.order == method.order  # the next draw continues identically
    other = make_method(info)
    other.order = (2, 1, 0)
    other.load_state_dict(make_method(info).state_dict())
    assert other.order is None  # "no order yet" round-trips too


# -- end to end --------------------------------------------------------------------------------

def check_method_log(history: list[dict], modalities: tuple[str, ...], active: list[float]):
    for record, is_active in zip(history, active):
        logged = record["method"]
        assert logged["active"] == is_active
        if not is_active:
            assert set(logged) == {"active"}
            continue
        assert set(logged) == {"active", "conf_loss", "conf_violation_rate"} | {
            f"removed_{m}" for m in modalities}
        removed = [logged[f"removed_{m}"] for m in modalities]
        assert all(r in (0.0, 1.0) for r in removed)  # one order for the whole epoch
        assert sum(removed) == len(modalities) - 1
        assert logged["conf_loss"] >= 0 and 0 <= logged["conf_violation_rate"] <= 1
        assert (logged["conf_loss"] > 0) == (logged["conf_violation_rate"] > 0)


@pytest.mark.parametrize("dataset,modalities", [("mfeat", ("fac", "mor")),
                                                ("mfeat-fac-fou-mor", ("fac", "fou", "mor"))])
def test_a_run_records_the_method_log_of_every_active_epoch(tmp_path, dataset, modalities):
    result = bbench.run("CML", dataset, output_root=str(tmp_path), start=1, **{**TINY, "epochs": 3})
    assert sorted(k for k in result.metrics if k.startswith("acc_")) == [f"acc_{m}" for m in modalities]
    check_method_log(result.history, modalities, [0.0, 1.0, 1.0])
    assert result.metrics["train_flops"] > 0


def test_the_command_line_run_writes_a_record_with_the_method_log(tmp_path: Path):
    out = tmp_path / "cml"
    code = main(["run", "--method", "CML", "--dataset", "mfeat", "--out", str(out),
                 "--epochs", "2", "--set", "dataset.options.subsample_per_class=20",
                 "--lam", "0.5", "--quiet"])
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    assert record["spec"]["method"] == "CML" and record["spec"]["method_params"]["lam"] == 0.5
    check_method_log(record["history"], ("fac", "mor"), [1.0, 1.0])


def test_an_interrupted_run_resumed_ends_like_the_uninterrupted_one(tmp_path: Path):
    settings_ = {**TINY, "epochs": 4}
    whole = bbench.run("CML", "mfeat-fac-fou-mor", output_root=str(tmp_path / "whole"),
                       **settings_)
    resumed = interrupted_and_resumed("CML", "mfeat-fac-fou-mor", 1,
                                      output_root=str(tmp_path / "resumed"), **settings_)
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    for key in ("acc", "f1", "val_acc", "best_epoch", "train_flops"):
        assert resumed.metrics[key] == whole.metrics[key], key
