"""UMT (methods.md §6.2): feature distillation from frozen unimodal teachers.

Step-level properties run on toy data with hand-made teachers (`UMT.use_teachers`, the
call `on_fit_start` makes with the loaded ones), some with batch norm inside, for M = 2
and M = 3. The teachers' discovery, loading, reuse, resume and FLOPs run end to end on
mfeat (20 training samples per class) under one output root, so the Unimodal teachers
are trained once for the whole module.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import bbench
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import Batch, DataInfo, TensorMultimodalDataset
from bbench.data.registry import build_datamodule
from bbench.engine.selected import BEST_MODEL_NAME
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext, StepOutput
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.methods.umt import UMT
from bbench.models.encoders import MLPEncoder, MLPOptions
from bbench.models.multimodal import build_multimodal_model
from bbench.results.record import RunResult
from bbench.testing.methods import grads_of, one_step, toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed
from tests.unit.test_method_flops import BUDGET, EPOCHS, Blocks, check

NAMES = ("a", "b", "c")
DIMS = (6, 4, 5)
K = 3


def toy(M: int) -> DataInfo:
    return toy_info(dims=DIMS[:M], num_classes=K, names=NAMES[:M])


def teacher_encoders(info: DataInfo, seed: int = 1, bn: bool = False) -> list[nn.Module]:
    """Encoders of another initialisation; with `bn`, a BatchNorm1d with non-trivial running
    statistics after the first layer (a batch-dependent layer whose buffers could drift)."""
    torch.manual_seed(seed)
    model = build_multimodal_model(info, ModelSpec())
    encoders = [model.encoders[m] for m in info.modalities]
    if bn:
        for enc in encoders:
            norm = nn.BatchNorm1d(128)
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            enc.stages[0].append(norm)
    return encoders


def umt_trainer(info: DataInfo, params: dict[str, Any], batch: Batch,
                teachers: list[nn.Module] | None = None) -> Trainer:
    """A UMT trainer built exactly as `one_step` builds one (same initialisation of the
    student), with `teachers` handed over as `on_fit_start` hands over the loaded ones."""
    method = build_method("UMT", params, RunContext(info, ModelSpec(), 0, torch.device("cpu")))
    torch.manual_seed(0)
    model = method.build_model()
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    spec = TrainSpec(optimizer=OptimizerSpec(lr=0.1), epochs=1, batch_size=8, progress=False)
    trainer = Trainer(spec, TrainingData(info, split, split), method, model, count_flops=False)
    method.use_teachers(trainer, teacher_encoders(info) if teachers is None else teachers)
    return trainer


def umt_step(trainer: Trainer, batch: Batch, epoch: int = 0) -> StepOutput:
    method = trainer.method
    return method.train_step(trainer, batch, StepInfo(epoch, 0, 1, 0, active=method.active(epoch)))


def assert_same_grads(a: nn.Module, b: nn.Module, names: list[str] | None = None) -> None:
    ga, gb = grads_of(a), grads_of(b)
    assert ga.keys() == gb.keys()
    for n in names or ga:
        assert torch.equal(ga[n], gb[n]), n


# -- λ = 0 and outside the window: the Baseline step -----------------------------------------

@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
@settings(max_examples=8, deadline=None)
def test_scaling_zero_is_the_baseline_step_bit_for_bit(M, seed):
    info = toy(M)
    batch = toy_batch(info, n=8, seed=seed)
    base, base_out = one_step("Baseline", {}, info, batch)
    trainer = umt_trainer(info, {"scaling": 0.0}, batch)
    out = umt_step(trainer, batch)
    assert torch.equal(out.loss, base_out.loss)
    assert_same_grads(trainer.model, base.model)
    for (n, p), q in zip(trainer.model.named_parameters(), base.model.parameters()):
        assert torch.equal(p, q), n  # the optimizer step moved both alike
    assert set(trainer.method.log.flush()) == {f"distill_{m}" for m in info.modalities}


@pytest.mark.parametrize("M", [2, 3])
def test_outside_the_window_the_step_is_the_plain_baseline_step(M):
    info = toy(M)
    batch = toy_batch(info, n=8)
    base, base_out = one_step("Baseline", {}, info, batch)
    trainer = umt_trainer(info, {"scaling": 10.0, "start": 1, "end": 2}, batch)
    out = umt_step(trainer, batch, epoch=0)
    assert torch.equal(out.loss, base_out.loss)
    assert_same_grads(trainer.model, base.model)
    assert trainer.method.log.flush() == {}  # no teacher pass, nothing distilled


# -- the teachers are frozen -------------------------------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_teacher_parameters_and_buffers_are_bit_for_bit_unchanged_after_steps(M):
    info = toy(M)
    teachers = teacher_encoders(info, bn=True)
    before = [copy.deepcopy(t.state_dict()) for t in teachers]
    data = toy_batch(info, n=32, seed=3)
    trainer = umt_trainer(info, {"scaling": 10.0}, data, teachers=teachers)
    student_before = copy.deepcopy(trainer.model.state_dict())
    loader = trainer.train_loader(trainer.data.train, epoch=0)
    for j, batch in enumerate(loader):
        trainer.method.train_step(trainer, batch, StepInfo(0, j, len(loader), j))
    assert j == 3
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.model.state_dict().items())
    for teacher, state in zip(trainer.method.teachers, before):
        assert not teacher.training
        assert teacher.state_dict().keys() == state.keys()
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, state[key]), key  # num_batches_tracked and BN stats too
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
        assert all(p.device == trainer.device for p in teacher.parameters())
    # never in the optimizer, never a submodule of the student (so not in its checkpoint)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    student = {id(p) for p in trainer.model.parameters()}
    for teacher in trainer.method.teachers:
        assert not any(id(p) in optimized or id(p) in student for p in teacher.parameters())
    plain = build_multimodal_model(info, ModelSpec())
    assert trainer.model.state_dict().keys() == plain.state_dict().keys()


def test_pitfall_teachers_stay_in_eval_mode_although_the_loop_trains_the_model():
    # Public implementations leave the teachers in training mode: their BN statistics then
    # drift with every step. The step calls model.train(); the teachers must not follow.
    info = toy(2)
    batch = toy_batch(info, n=8)
    trainer = umt_trainer(info, {"scaling": 1.0}, batch, teachers=teacher_encoders(info, bn=True))
    teacher = trainer.method.teachers[0]
    stats = teacher.stages[0][-1].running_mean.clone()
    umt_step(trainer, batch)
    assert trainer.model.training and not teacher.training
    assert torch.equal(teacher.stages[0][-1].running_mean, stats)
    drifting = copy.deepcopy(teacher).train()  # what the pitfall would do: the test can see it
    with torch.no_grad():
        drifting(batch["a"])
    assert not torch.equal(drifting.stages[0][-1].running_mean, stats)


# -- student equal to its teacher --------------------------------------------------------------

@given(M=st.sampled_from([2, 3]), seed=st.integers(0, 2**16), which=st.integers(0, 2))
@settings(max_examples=8, deadline=None)
def test_a_student_equal_to_its_teacher_has_zero_term_and_zero_gradient(M, seed, which):
    info = toy(M)
    which %= M
    batch = toy_batch(info, n=8, seed=seed)
    ctx = RunContext(info, ModelSpec(), 0, torch.device("cpu"))
    method = build_method("UMT", {"scaling": 10.0}, ctx)
    torch.manual_seed(seed)
    model = method.build_model()
    teachers = teacher_encoders(info, seed=seed + 1)
    # the MLP encoder has no BN and no dropout: student and copy compute the same function
    teachers[which] = copy.deepcopy(model.encoders[info.modalities[which]])
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, batch["label"])
    trainer = Trainer(TrainSpec(epochs=1, batch_size=8, progress=False),
                      TrainingData(info, split, split), method, model, count_flops=False)
    method.use_teachers(trainer, teachers)
    model.train()
    out = method.forward(model, batch, StepInfo(0, 0, 1, 0))
    distill = method.distillation(out.features, batch)
    assert distill[which].item() == 0.0
    assert all(distill[i].item() > 0 for i in range(M) if i != which)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(distill[which], params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)


# -- the distillation gradient reaches only enc(m) ----------------------------------------------

@pytest.mark.parametrize("M", [2, 3])
def test_the_distillation_gradient_reaches_only_its_own_encoder_and_never_the_head(M):
    info = toy(M)
    batch = toy_batch(info, n=8)
    trainer = umt_trainer(info, {"scaling": 10.0}, batch)
    method, model = trainer.method, trainer.model
    model.train()
    out = method.forward(model, batch, StepInfo(0, 0, 1, 0))
    distill = method.distillation(out.features, batch)
    names = [n for n, _ in model.named_parameters()]
    for i, m in enumerate(info.modalities):
        grads = torch.autograd.grad(distill[i], list(model.parameters()), allow_unused=True,
                                    retain_graph=True)
        reached = {n for n, g in zip(names, grads) if g is not None and g.any()}
        assert reached and all(n.startswith(f"encoders.{m}.") for n in reached), reached
    # In the whole step the head gets exactly Baseline's gradient; every encoder gets more.
    base, _ = one_step("Baseline", {}, info, batch)
    umt_step(trainer, batch)
    ours, theirs = grads_of(model), grads_of(base.model)
    assert_same_grads(model, base.model, [n for n in ours if n.startswith("head.")])
    for m in info.modalities:
        w = f"encoders.{m}.stages.0.0.weight"
        assert not torch.equal(ours[w], theirs[w]), w


# -- teacher set-up errors ------------------------------------------------------------------------

def test_a_teacher_of_another_width_is_refused_naming_the_modality_and_widths():
    info = toy(2)
    teachers = teacher_encoders(info)
    teachers[1] = MLPEncoder(DIMS[1], MLPOptions(hidden=(16, 32)))
    with pytest.raises(ValueError, match=r"teacher of modality 'b' outputs 32 features but the "
                                         r"student encoder outputs 64"):
        umt_trainer(info, {}, toy_batch(info), teachers=teachers)
    with pytest.raises(ValueError, match="1 teachers for 2 modalities"):
        umt_trainer(info, {}, toy_batch(info), teachers=teachers[:1])


def test_balancemm_alpha_is_not_carried_over_and_defaults_are_balancemms():
    ctx = RunContext(toy(2), ModelSpec(), 0, torch.device("cpu"))
    p = build_method("UMT", {}, ctx).params
    assert (p.scaling, p.start, p.end, p.teacher_runs) == (10.0, 0, 80, ())
    assert build_method("UMT", {"modulation_starts": 2}, ctx).params.start == 2
    with pytest.raises(SpecError, match="alpha"):
        build_method("UMT", {"alpha": 1}, ctx)
    with pytest.raises(SpecError, match="scaling"):
        build_method("UMT", {"scaling": -1}, ctx)


# -- end to end on mfeat: teachers found or trained once, reused, resumed -----------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("umt_runs")


def runs_of(root: Path, method: str) -> list[Path]:
    return sorted(p.parent for p in root.rglob("record.json")
                  if json.loads(p.read_text())["spec"]["method"] == method)


def umt_run(root: Path, dataset: str = "mfeat", **params: Any) -> RunResult:
    return bbench.run("UMT", dataset, output_root=str(root), **BUDGET, **params)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,modalities", [("mfeat", ("fac", "mor")),
                                                ("mfeat-fac-fou-mor", ("fac", "fou", "mor"))])
def test_a_run_trains_its_teachers_once_and_a_second_run_reuses_them(root, dataset, modalities):
    first = umt_run(root, dataset)
    teachers = runs_of(root / dataset, "Unimodal")
    assert len(teachers) == len(modalities)
    second = umt_run(root, dataset, start=1)
    assert runs_of(root / dataset, "Unimodal") == teachers  # no new Unimodal run directory
    for result in (first, second):
        named = [Path(p) for p in result.extra["inputs"]["teachers"]]
        assert sorted(named) == teachers
        modality_of = [RunResult.load(p).spec["method_params"]["modality"] for p in named]
        assert modality_of == list(modalities)  # in modality order
    keys = {f"distill_{m}" for m in modalities}
    for record in first.history:
        assert set(record["method"]) == keys | {"active"} and record["method"]["active"] == 1.0
        assert all(math.isfinite(record["method"][k]) and record["method"][k] > 0 for k in keys)
    # the window: epoch 0 is the plain step (no teacher pass), epoch 1 distils
    assert second.history[0]["method"] == {"active": 0.0}
    assert set(second.history[1]["method"]) == keys | {"active"}
    # the teachers are not part of the student: its selected weights are Baseline's keys
    weights = torch.load(first.run_dir / BEST_MODEL_NAME, weights_only=True)
    assert not [k for k in weights if not k.startswith(("encoders.", "head."))]


def fit_started(root: Path) -> tuple[UMT, Trainer]:
    """A UMT method on mfeat after `on_fit_start`, its inputs resolved as the runner does."""
    spec = resolve_spec("UMT", "mfeat", {**BUDGET, "output_root": str(root)})
    data = build_datamodule(spec.dataset)
    inputs = bbench.runner.resolve_inputs(spec, None)
    ctx = RunContext(data.info, spec.model, spec.train.seed, torch.device("cpu"), spec, inputs)
    method = build_method("UMT", spec.method_params, ctx)
    trainer = Trainer(spec.train, TrainingData(data.info, data.train, data.val), method,
                      method.build_model(), count_flops=False)
    method.on_fit_start(trainer)
    return method, trainer


@pytest.mark.slow
def test_pitfall_teacher_weights_load_without_renaming_and_a_prefixed_file_is_refused(root,
                                                                                       tmp_path):
    method, trainer = fit_started(root)
    for m, teacher, run in zip(method.modalities, method.teachers, method.ctx.inputs["teachers"]):
        saved = torch.load(run.run_dir / BEST_MODEL_NAME, weights_only=True)
        assert all(k.startswith((f"encoders.{m}.", "head.")) for k in saved)  # no wrapper prefix
        prefix = f"encoders.{m}."
        expected = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        state = teacher.state_dict()
        assert state.keys() == expected.keys() == trainer.model.encoders[m].state_dict().keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
        assert not teacher.training
    # A teacher file saved under a wrapper prefix is refused with the file named, not half-loaded.
    runs = []
    for run in method.ctx.inputs["teachers"]:
        copied = tmp_path / run.run_dir.name
        shutil.copytree(run.run_dir, copied)
        saved = torch.load(copied / BEST_MODEL_NAME, weights_only=True)
        torch.save({f"module.{k}": v for k, v in saved.items()}, copied / BEST_MODEL_NAME)
        runs.append(str(copied))
    with pytest.raises(ValueError, match=r"best_model\.pt does not fit .*wrapper prefix"):
        umt_run(root, teacher_runs=runs)


@pytest.mark.slow
def test_named_teacher_runs_are_checked(root, tmp_path):
    method, _ = fit_started(root)
    teachers = [str(r.run_dir) for r in method.ctx.inputs["teachers"]]
    # in any order: matched by modality
    result = umt_run(root, teacher_runs=teachers[::-1])
    assert sorted(result.extra["inputs"]["teachers"]) == sorted(teachers)
    with pytest.raises(SpecError, match="no teacher run for modality 'mor'"):
        umt_run(root, teacher_runs=teachers[:1])
    with pytest.raises(SpecError, match="is a UMT run, not a Unimodal run"):
        umt_run(root, teacher_runs=[teachers[0], str(result.run_dir)])
    other_split = bbench.run("Unimodal", "mfeat", modality="fac", output_root=str(tmp_path),
                             **{**BUDGET, "dataset.options": {"subsample_per_class": 10}})
    with pytest.raises(SpecError, match="used dataset settings .* same data and split"):
        umt_run(root, teacher_runs=[str(other_split.run_dir), teachers[1]])
    narrow_model = {"model.encoders": {"*": {"type": "mlp", "options": {"hidden": [128, 32]}}}}
    narrow = [bbench.run("Unimodal", "mfeat", modality=m, output_root=str(tmp_path), **BUDGET,
                         **narrow_model).run_dir for m in ("fac", "mor")]
    with pytest.raises(ValueError, match="modality 'fac' outputs 32 features but the student "
                                         "encoder outputs 64"):
        umt_run(root, teacher_runs=[str(p) for p in narrow])


@pytest.mark.slow
def test_an_interrupted_run_resumed_ends_as_the_uninterrupted_one_without_new_teachers(root):
    whole = umt_run(root)
    teachers = runs_of(root / "mfeat", "Unimodal")
    resumed = interrupted_and_resumed("UMT", "mfeat", 0, output_root=str(root), **BUDGET)
    for key in ("acc", "f1", "imbalance", "shapley", "train_flops", "best_epoch", "val_acc"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.extra["inputs"] == whole.extra["inputs"]
    assert runs_of(root / "mfeat", "Unimodal") == teachers  # not retrained


# -- training FLOPs: Baseline's plus M teacher encoder forwards per sample -------------------------

@pytest.mark.slow
def test_training_flops_are_baselines_plus_the_teacher_encoder_forwards(root):
    blocks = Blocks()
    base = bbench.run("Baseline", "mfeat", output_root=str(root / "flops"), **BUDGET).metrics
    umt = umt_run(root).metrics
    # Per sample of every (active) step: the M teachers' forwards under no-grad, each the cost
    # of the student's encoder of that modality (same architecture). The MSE and its backward
    # are element-wise (0 counted); the MSE gradient joins each encoder's backward at h_m, so
    # the backward is Baseline's. Loading the teachers costs nothing.
    teacher = sum(blocks.enc_fwd.values())
    predicted = EPOCHS * blocks.pass_samples * (blocks.step() + teacher)
    assert umt["train_flops_by_region"]["fit_start"] == 0
    check(umt, base, predicted, "UMT")
