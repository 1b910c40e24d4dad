"""The reworked method contract (methods/base.py, methods/loop.py, engine/trainer.py).

What a method may rely on from the one training loop: model selection keeps the weights
that were validated (before `on_epoch_end` may edit them), `on_fit_start` runs again on a
resume before the checkpoint is restored, `param_groups` builds the optimizer,
`observe_grads` sees every step with `step.active`, and `optimizer_step` is the only
update; plus the facts methods declare on their classes and the small helpers around the
loop (fit_copy, eval_mode, the staged MLP encoder, Shapley's path choice).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bbench
import bbench.runner
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine import checkpoint as ckpt
from bbench.engine.copies import fit_copy
from bbench.engine.trainer import Trainer
from bbench.methods.base import Method, RunContext, WindowParams
from bbench.methods.facts import Family
from bbench.methods.linear_probe import LinearProbe
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import METHODS, build_method, methods_in_table_order, reference_method
from bbench.metrics.shapley import choose_path
from bbench.models.encoders import MLPEncoder, MLPOptions
from bbench.models.modes import eval_mode
from bbench.models.multimodal import MultimodalModel
from bbench.models.staged import StagedEncoder
from bbench.testing.methods import toy_batch, toy_info

INFO = toy_info()
CPU = torch.device("cpu")
IDENTITY = {"spec": {}, "hash": "x"}


def ctx(info=INFO) -> RunContext:
    return RunContext(info, ModelSpec(), 0, CPU)


def toy_data(n: int = 32, seed: int = 0, info=INFO) -> TrainingData:
    """A learnable toy problem: the label is the argmax of a fixed projection of modality a."""
    batch = toy_batch(info, n=n, seed=seed)
    g = torch.Generator().manual_seed(123)
    proj = torch.randn(info.input_shapes["a"][0], info.num_classes, generator=g)
    labels = (batch["a"] @ proj).argmax(1)
    split = TensorMultimodalDataset({m: batch[m] for m in info.modalities}, labels)
    return TrainingData(info, split, split)


def trainer_for(method: Method, epochs: int = 2, batch_size: int = 8, data: TrainingData | None = None,
                seed: int = 0, **kwargs) -> Trainer:
    torch.manual_seed(seed)
    model = method.build_model()
    spec = TrainSpec(epochs=epochs, batch_size=batch_size, progress=False,
                     optimizer=OptimizerSpec(lr=0.1))
    return Trainer(spec, data or toy_data(), method, model, **kwargs)


def encoder_params(model: MultimodalModel) -> list[nn.Parameter]:
    return [p for m in model.modalities for p in model.encoders[m].parameters()]


# -- 1. model selection keeps the validated weights ------------------------------------------

class ZeroingMethod(Method):
    """Re-initialises (here: zeroes) every encoder after validation, as ReLearning might."""

    name = "Zeroing"

    def __init__(self, params, c) -> None:
        super().__init__(params, c)
        self.validated: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, loop, epoch):
        self.validated[epoch] = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}
        with torch.no_grad():
            for p in encoder_params(loop.model):
                p.zero_()


def test_best_state_holds_the_validated_weights_not_those_on_epoch_end_left():
    method = ZeroingMethod(None, ctx())
    trainer = trainer_for(method, epochs=2, count_flops=False)
    fit = trainer.fit()
    assert fit.best_epoch in method.validated
    validated = method.validated[fit.best_epoch]
    assert set(fit.best_state) == set(validated)
    for key, value in validated.items():
        assert torch.equal(fit.best_state[key], value), key
    enc_keys = [k for k in fit.best_state if k.startswith("encoders.") and k.endswith("weight")]
    assert enc_keys and any(bool(fit.best_state[k].abs().sum() > 0) for k in enc_keys)
    # on_epoch_end did zero the live model: the snapshot is not an alias of it
    assert all(bool((p == 0).all()) for p in encoder_params(trainer.model))


# -- 2. resume runs on_fit_start before the checkpoint is restored ---------------------------

class AuxMethod(Method):
    """Builds an auxiliary model in on_fit_start; every step updates and uses it."""

    name = "Aux"

    def __init__(self, params, c) -> None:
        super().__init__(params, c)
        self.fit_starts: list[int] = []  # loop.epoch seen by each on_fit_start
        self.aux_steps = 0

    def on_fit_start(self, loop):
        self.fit_starts.append(loop.epoch)
        g = torch.Generator().manual_seed(7)
        self.aux = nn.Linear(4, 1)
        with torch.no_grad():
            self.aux.weight.copy_(torch.randn(1, 4, generator=g))
            self.aux.bias.zero_()

    def after_step(self, out, batch, step):
        with torch.no_grad():  # what the auxiliary model "learns" during training
            self.aux.bias += 1.0
            self.log.add("aux", self.aux(torch.ones(1, 4)).sum())
        self.aux_steps += 1

    def extra_state(self):
        return {"aux": {k: v.clone() for k, v in self.aux.state_dict().items()}}

    def load_extra_state(self, state):
        self.aux.load_state_dict(state["aux"])  # needs the aux model on_fit_start built


def test_resume_runs_on_fit_start_once_before_restoring_and_ends_like_an_uninterrupted_fit(tmp_path):
    full_method = AuxMethod(None, ctx())
    full = trainer_for(full_method, epochs=4, count_flops=False).fit()

    class Interrupt(Exception):
        pass

    def stop_after_second_epoch(trainer, epoch, record):
        if epoch == 1:
            raise Interrupt

    first = AuxMethod(None, ctx())
    cut = trainer_for(first, epochs=4, run_dir=tmp_path, count_flops=False,
                      run_identity=IDENTITY, callbacks=[stop_after_second_epoch])
    cut.spec = dataclasses.replace(cut.spec, checkpoint_seconds=0)  # a checkpoint every epoch
    with pytest.raises(Interrupt):
        cut.fit()
    assert first.fit_starts == [0]
    state = ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME, CPU)
    assert state["epoch"] == 2

    resumed = AuxMethod(None, ctx())
    trainer = trainer_for(resumed, epochs=4, run_dir=tmp_path, count_flops=False,
                          run_identity=IDENTITY, seed=99)  # another init: the restore replaces it
    fit = trainer.fit(resume_state=state)
    assert resumed.fit_starts == [0]  # once, on the fresh loop, before the restore set epoch 2
    assert isinstance(resumed.aux, nn.Linear)
    assert resumed.aux_steps == fit.steps - state["global_step"] > 0
    # the restore put the aux state learnt in epochs 0-1 over the freshly built aux model
    assert torch.equal(resumed.aux.bias, full_method.aux.bias)
    assert float(resumed.aux.bias.detach()) == fit.steps
    assert [h["val_acc"] for h in fit.history] == [h["val_acc"] for h in full.history]
    assert [h["method"]["aux"] for h in fit.history] == [h["method"]["aux"] for h in full.history]


def test_a_finished_fits_checkpoint_cannot_start_a_longer_fit(tmp_path):
    """It holds no final weights or optimizer state: a fit that would train on from it is
    refused, not started silently from the freshly built model."""
    trainer_for(AuxMethod(None, ctx()), epochs=2, run_dir=tmp_path, count_flops=False,
                run_identity=IDENTITY).fit()
    state = ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME, CPU)
    assert state["finished"] and "model" not in state
    longer = trainer_for(AuxMethod(None, ctx()), epochs=4, count_flops=False)
    with pytest.raises(ckpt.CheckpointError, match="finished after 2 epochs, and this run trains 4"):
        longer.fit(resume_state=state)


# -- 3. Unimodal training accuracy is named by its modality ----------------------------------

def test_unimodal_training_accuracy_is_named_by_its_own_modality(tmp_path):
    result = bbench.run("Unimodal", "mfeat", modality="mor", epochs=1, progress=False,
                        out=str(tmp_path / "u"), **{"train.modality_train_acc": True})
    assert result.history
    for record in result.history:
        assert "train_acc_mor" in record and 0 <= record["train_acc_mor"] <= 1
        assert "train_acc_fac" not in record
        assert not [k for k in record if k.startswith("train_acc_") and k != "train_acc_mor"]


# -- 4. LinearProbe reads train features under evaluation transforms -------------------------

def test_linear_probe_caches_train_features_from_train_eval(tmp_path, monkeypatch):
    from bbench.data.registry import build_datamodule as real_build

    plain = real_build(bbench.runner.resolve_spec("Baseline", "mfeat", {}, None).dataset)
    assert plain.train_eval is None  # mfeat has no separate evaluation-transform train split

    built = []

    def with_train_eval(spec):
        data = real_build(spec)
        train = data.train
        train_eval = TensorMultimodalDataset(dict(train.features), train.labels, train.ids)
        data = dataclasses.replace(data, train_eval=train_eval)
        built.append(data)
        return data

    calls = []
    real_features = LinearProbe._features

    def recording(self, model, dataset, collate, device):
        calls.append(dataset)
        return real_features(self, model, dataset, collate, device)

    monkeypatch.setattr(bbench.runner, "build_datamodule", with_train_eval)
    monkeypatch.setattr(LinearProbe, "_features", recording)
    result = bbench.run("LinearProbe", "mfeat", epochs=1, probe_epochs=1, progress=False,
                        output_root=str(tmp_path))
    assert "probe_acc_fac" in result.metrics and "probe_acc_mor" in result.metrics
    probe_data = built[-1]  # inputs (Baseline, Unimodal fac and mor) are built first
    assert len(built) == 4
    assert len(calls) == 3
    assert calls[0] is probe_data.train_eval and calls[0] is not probe_data.train
    assert calls[1] is probe_data.val and calls[2] is probe_data.test


# -- 5. param_groups build the optimizer ---------------------------------------------------

class FrozenEncodersMethod(Method):
    name = "FrozenEncoders"

    def param_groups(self, model):
        return [{"params": encoder_params(model), "lr": 0.0},
                {"params": list(model.head.parameters()), "lr": 0.1}]


def test_param_groups_set_per_group_learning_rates():
    method = FrozenEncodersMethod(None, ctx())
    trainer = trainer_for(method, count_flops=False)
    assert len(trainer.optimizer.param_groups) == 2
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0, 0.1]
    enc_before = [p.detach().clone() for p in encoder_params(trainer.model)]
    head_before = [p.detach().clone() for p in trainer.model.head.parameters()]
    batch = toy_batch(INFO, n=8)
    method.train_step(trainer, batch, StepInfo(0, 0, 1, 0))
    assert all(torch.equal(p, b) for p, b in zip(encoder_params(trainer.model), enc_before))
    assert all(p.grad is not None for p in encoder_params(trainer.model))  # trained, lr 0
    assert any(not torch.equal(p, b) for p, b in zip(trainer.model.head.parameters(), head_before))


# -- 6. observe_grads runs on every step, inside and outside the window -----------------------

class ObservingWindowed(Method):
    name = "ObservingWindowed"
    Params = WindowParams
    windowed = True

    def __init__(self, params, c) -> None:
        super().__init__(params, c)
        self.active_seen: list[bool] = []
        self.grads_present: list[bool] = []

    def observe_grads(self, out, batch, step):
        self.active_seen.append(step.active)
        self.grads_present.append(all(p.grad is not None for p in encoder_params(out.model)))


@pytest.mark.parametrize("start,active", [(5, False), (0, True)])
def test_observe_grads_sees_every_step_with_the_window_state(start, active):
    method = ObservingWindowed(WindowParams(start=start, end=80), ctx())
    fit = trainer_for(method, epochs=2, count_flops=False).fit()
    assert fit.steps == 8  # 32 samples, batch 8, 2 epochs
    assert len(method.active_seen) == fit.steps
    assert method.active_seen == [active] * fit.steps
    assert all(method.grads_present)  # called after backward
    assert [h["method"]["active"] for h in fit.history] == [float(active)] * 2


# -- 7. optimizer_step is the only update path ----------------------------------------------

@pytest.mark.parametrize("name,params", [("Baseline", {}), ("OGM", {"start": 0}),
                                         ("OGM", {"start": 1}), ("OPM", {"start": 0}),
                                         ("MMPareto", {"start": 0}),
                                         ("ModalityValuation", {"start": 0})])
def test_every_update_goes_through_optimizer_step(name, params):
    method = build_method(name, params, ctx())
    trainer = trainer_for(method, epochs=2, count_flops=False)
    counts = {"loop": 0, "optimizer": 0}
    loop_step = trainer.optimizer_step

    def counted_loop_step():
        counts["loop"] += 1
        loop_step()

    def count_optimizer_step(optimizer, args, kwargs):
        counts["optimizer"] += 1

    trainer.optimizer_step = counted_loop_step
    trainer.optimizer.register_step_post_hook(count_optimizer_step)
    fit = trainer.fit()
    assert fit.steps >= 8  # 32 samples, batch 8, 2 epochs (ModalityValuation may add copies)
    assert counts == {"loop": fit.steps, "optimizer": fit.steps}


# -- 8. registry facts ------------------------------------------------------------------------

def test_reference_method_and_table_order_follow_the_declared_facts():
    assert reference_method() == "Baseline"
    order = methods_in_table_order()
    assert sorted(order) == sorted(METHODS)
    families = [METHODS.get(n).family for n in order]
    assert all(isinstance(f, Family) for f in families)
    ranks = [list(Family).index(f) for f in families]
    assert ranks == sorted(ranks)
    assert families[0] is Family.REFERENCE and families[-1] is Family.EVALUATION
    assert order.index("Unimodal") < order.index("Baseline")
    assert order[:2] == ["Unimodal", "Baseline"] and order[-1] == "LinearProbe"
    assert [n for n in METHODS if METHODS.get(n).comparison_reference] == ["Baseline"]
    for name in ("Baseline", "OGM", "OPM"):
        assert METHODS.get(name).extra_passes is False, name
    for name in ("MMPareto", "ModalityValuation"):
        assert METHODS.get(name).extra_passes is True, name


def test_methods_declaring_extra_passes_cost_more_training_flops_than_baseline(tmp_path):
    settings = {"epochs": 1, "progress": False, "output_root": str(tmp_path),
                "dataset.options": {"subsample_per_class": 20}}
    flops = {name: bbench.run(name, "mfeat", **settings, **params).metrics["train_flops"]
             for name, params in (("Baseline", {}), ("MMPareto", {"start": 0}),
                                  ("ModalityValuation", {"start": 0}))}
    assert flops["Baseline"] > 0
    assert flops["MMPareto"] > flops["Baseline"]
    assert flops["ModalityValuation"] > flops["Baseline"]


# -- 9. fit_copy ------------------------------------------------------------------------------

def separable_problem(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def test_fit_copy_trains_and_keeps_its_best_epoch():
    x, y = separable_problem()
    torch.manual_seed(0)
    module = nn.Linear(2, 2)
    seen_training = []

    def score(m):
        seen_training.append(m.training)
        return float((m(x).argmax(1) == y).float().mean())

    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    fitted = fit_copy(module, lambda epoch: batches,
                      lambda m, xy: F.cross_entropy(m(xy[0]), xy[1]), score, 10,
                      OptimizerSpec(lr=0.5, momentum=0.0, weight_decay=0.0))
    assert fitted.best_score >= 0.95  # it trained
    assert fitted.best_epoch == fitted.scores.index(max(fitted.scores))
    assert seen_training == [False] * 10  # scored in eval mode
    assert module.training is True  # it came in training mode
    with torch.no_grad():
        assert score(module) == fitted.best_score  # the module holds the best epoch's weights


def test_fit_copy_returns_the_first_epoch_of_the_highest_score_and_its_weights():
    x, y = separable_problem()
    torch.manual_seed(0)
    module = nn.Linear(2, 2)
    scripted = iter([0.5, 0.9, 0.7, 0.9, 0.8])
    states = []

    def score(m):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scripted)

    module.eval()
    fitted = fit_copy(module, lambda epoch: [(x, y)],
                      lambda m, xy: F.cross_entropy(m(xy[0]), xy[1]), score, 5,
                      OptimizerSpec(lr=0.5, momentum=0.0, weight_decay=0.0))
    assert fitted.scores == [0.5, 0.9, 0.7, 0.9, 0.8]
    assert (fitted.best_epoch, fitted.best_score) == (1, 0.9)
    assert not torch.equal(states[1]["weight"], states[-1]["weight"])
    for key, value in module.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    assert module.training is False  # it came in eval mode: trained in train mode, then restored


# -- 10. eval_mode ----------------------------------------------------------------------------

def test_eval_mode_restores_the_mode_when_the_body_raises():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    with pytest.raises(ZeroDivisionError):
        with eval_mode(model):
            assert not model.training and not model[1].training
            1 / 0
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with pytest.raises(ValueError):
        with eval_mode(model):
            raise ValueError("boom")
    assert not any(m.training for m in model.modules())


# -- 11. the MLP encoder is a staged encoder --------------------------------------------------

def test_mlp_encoder_forward_is_exit_of_stages_of_enter():
    encoder = MLPEncoder(6, MLPOptions(hidden=(5, 4), dropout=0.2))
    assert isinstance(encoder, StagedEncoder)
    assert isinstance(encoder.stages, nn.Sequential) and len(encoder.stages) == 2
    assert encoder.out_dim == 4
    encoder.eval()
    x = torch.randn(3, 2, 3)  # flattened by enter
    y, c = encoder.enter(x)
    assert y.shape == (3, 6)
    assert torch.equal(encoder(x), encoder.exit(encoder.stages(y), c))
    assert encoder(x).shape == (3, encoder.out_dim)


# -- 12. choose_path --------------------------------------------------------------------------

class NonSeparableModel(MultimodalModel):
    separable = False


class CustomEvaluation(Method):
    name = "CustomEvaluation"

    def eval_logits(self, model, batch, present=None, unimodal=True):
        return super().eval_logits(model, batch, present, unimodal)


def test_choose_path_takes_one_pass_only_when_it_is_exact():
    baseline = build_method("Baseline", {}, ctx())
    model = baseline.build_model()
    assert choose_path(baseline, model) == "one-pass-linear"  # concat head
    assert baseline.default_evaluation() is True
    non_separable = NonSeparableModel(model.modalities, dict(model.encoders), model.head)
    assert choose_path(baseline, non_separable) == "masked-passes"
    custom = CustomEvaluation(None, ctx())
    assert custom.default_evaluation() is False
    assert choose_path(custom, model) == "masked-passes"
    gated = build_method("Baseline", {}, RunContext(INFO, ModelSpec(fusion="gated"), 0, CPU))
    assert choose_path(gated, gated.build_model()) == "one-pass-stacked"
    assert choose_path(baseline, nn.Linear(2, 2)) == "masked-passes"
