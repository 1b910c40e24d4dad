"""The loop's own cost (engine/trainer.py): what it does once per pass or epoch instead of
once per step, and the speed options (engine/fast_path.py) that change only how fast."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import bbench
from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import DataInfo, TensorMultimodalDataset
from bbench.engine import checkpoint as ckpt
from bbench.engine import host_memory
from bbench.engine.fast_path import FastPath
from bbench.engine.flops import FlopAccount
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.loop import TrainingData
from bbench.methods.registry import build_method
from bbench.testing.methods import toy_batch, toy_info

INFO = toy_info()
CPU = torch.device("cpu")
IDENTITY = {"spec": {}, "hash": "x"}


def trainer(n: int = 32, epochs: int = 2, batch_size: int = 8, **spec) -> Trainer:
    batch = toy_batch(INFO, n=n)
    split = TensorMultimodalDataset({m: batch[m] for m in INFO.modalities}, batch["label"])
    method = build_method("Baseline", {}, RunContext(INFO, ModelSpec(), 0, CPU))
    torch.manual_seed(0)
    train = TrainSpec(epochs=epochs, batch_size=batch_size, progress=False,
                      optimizer=OptimizerSpec(lr=0.1), **spec)
    return Trainer(train, TrainingData(INFO, split, split), method, method.build_model(),
                   count_flops=False)


def test_the_model_is_put_in_training_mode_once_per_pass_not_per_step(monkeypatch):
    calls = []
    original = nn.Module.train

    def counting(self, mode=True):
        if self is loop.model:
            calls.append(mode)
        return original(self, mode)

    loop = trainer(n=64, epochs=3, batch_size=8)  # 8 steps per epoch
    monkeypatch.setattr(nn.Module, "train", counting)
    loop.fit()
    # once per pass, plus validation's eval_mode switching to eval and back each epoch
    assert calls.count(True) == 3 * 2 and calls.count(False) == 3


def host_reads_of(n: int, monkeypatch) -> int:
    """Tensor-to-Python reads during a 2-epoch fit with n samples (n / 8 steps an epoch)."""
    reads = []
    for name in ("__float__", "item", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, **k):
            reads.append(1)
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    loop = trainer(n=n, epochs=2)
    fixed = toy_batch(INFO, n=16, seed=1)  # the same validation split for both sizes
    loop.data.val = TensorMultimodalDataset({m: fixed[m] for m in INFO.modalities}, fixed["label"])
    loop.fit()
    monkeypatch.undo()
    return len(reads)


def test_logging_reads_the_device_once_per_epoch_not_once_per_step(monkeypatch):
    """Twice the steps, the same reads except the NaN guard's one per step."""
    few, many = host_reads_of(32, monkeypatch), host_reads_of(64, monkeypatch)
    # 4 vs 8 steps in each of 2 epochs: the NaN guard (check_finite's bool) is the one
    # per-step read; logging adds none.
    per_step = (many - few) / (2 * (8 - 4))
    assert per_step == 1, f"{per_step:.2f} host reads per training step"


def saves_with(monkeypatch, tmp_path, epochs: int, **spec) -> list[int]:
    saved: list[int] = []
    monkeypatch.setattr(ckpt, "save", lambda path, state: saved.append(state["epoch"]))
    loop = trainer(epochs=epochs, **spec)
    loop.run_dir, loop.run_identity = tmp_path, IDENTITY
    loop.fit()
    return saved


def test_checkpoints_wait_for_checkpoint_seconds_and_the_last_epoch_is_always_written(
        monkeypatch, tmp_path):
    assert saves_with(monkeypatch, tmp_path, 4, checkpoint_seconds=3600) == [4]
    assert saves_with(monkeypatch, tmp_path, 4, checkpoint_seconds=0) == [1, 2, 3, 4]
    assert saves_with(monkeypatch, tmp_path, 4, checkpoint_seconds=0, checkpoint_every=3) == [3, 4]
    assert saves_with(monkeypatch, tmp_path, 4, checkpoint_every=0) == []


def test_the_default_checkpoint_interval_is_a_minute_of_training():
    assert TrainSpec().checkpoint_seconds == 60 and TrainSpec().checkpoint_every == 1


@settings(max_examples=8, deadline=None)
@given(kind=st.sampled_from(["sgd", "adam", "adamw"]), seed=st.integers(0, 2**16))
def test_the_multi_tensor_optimizer_updates_exactly_as_the_per_parameter_loop(kind, seed):
    from bbench.engine.optim import build_optimizer

    torch.manual_seed(seed)
    params = [torch.randn(6, 5, requires_grad=True), torch.randn(7, requires_grad=True)]
    copies = [p.detach().clone().requires_grad_() for p in params]
    spec = OptimizerSpec(type=kind, lr=0.05)
    ours = build_optimizer(spec, params)
    assert all(group["foreach"] for group in ours.param_groups)
    loop_kwargs = {"lr": 0.05, "weight_decay": spec.weight_decay, "foreach": False}
    reference = (torch.optim.SGD(copies, momentum=spec.momentum, **loop_kwargs) if kind == "sgd"
                 else {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](
                     copies, betas=spec.betas, **loop_kwargs))
    for _ in range(5):
        for p, q in zip(params, copies):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        reference.step()
    assert all(torch.equal(p, q) for p, q in zip(params, copies))


def test_a_step_signature_is_counted_once_and_reused():
    account = FlopAccount()
    w = torch.randn(8, 8)
    for _ in range(3):
        with account.count_step(("a",)):
            w @ w
    with account.count_step(("b",)):
        w @ w @ w
    one = 2 * 8 * 8 * 8
    assert account.total == 3 * one + 2 * one and account.reused == 2 * one
    assert account.by_signature == {("a",): one, ("b",): 2 * one}


def test_deterministic_defaults_to_true_on_cpu_and_false_on_cuda():
    cpu = FastPath.for_spec(TrainSpec(), CPU)
    assert cpu.deterministic and not cpu.cudnn_benchmark and not cpu.pin_memory
    cuda = FastPath.for_spec(TrainSpec(), torch.device("cuda"))
    assert not cuda.deterministic and cuda.cudnn_benchmark and cuda.pin_memory
    pinned_off = FastPath.for_spec(TrainSpec(pin_memory=False, deterministic=True),
                                   torch.device("cuda"))
    assert not pinned_off.cudnn_benchmark and not pinned_off.pin_memory


def test_workers_get_their_read_ahead_and_none_without_workers():
    assert FastPath.for_spec(TrainSpec(), CPU).loader_options() == {"num_workers": 0,
                                                                    "pin_memory": False}
    options = FastPath.for_spec(TrainSpec(num_workers=2, prefetch_factor=4), CPU).loader_options()
    assert options == {"num_workers": 2, "pin_memory": False, "prefetch_factor": 4,
                       "persistent_workers": False}
    persistent = FastPath.for_spec(TrainSpec(num_workers=2), CPU).loader_options(persistent=True)
    assert persistent["persistent_workers"]
    assert "persistent_workers" not in FastPath.for_spec(TrainSpec(), CPU).loader_options(True)


def test_channels_last_puts_convolution_weights_and_image_batches_in_nhwc():
    info = DataInfo("img", ("a", "b"), 3, {"a": (1, 16, 16), "b": (4,)},
                    {"a": torch.float32, "b": torch.float32})
    spec = ModelSpec(encoders={"a": EncoderSpec("resnet18", {"in_channels": 1}), "*": EncoderSpec()})
    method = build_method("Baseline", {}, RunContext(info, spec, 0, CPU))
    fast = FastPath.for_spec(TrainSpec(channels_last=True), CPU)
    model = fast.prepare_model(method.build_model())
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    batch = fast.batch_layout({"a": torch.randn(2, 1, 16, 16), "b": torch.randn(2, 4)})
    assert batch["a"].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # same numbers in either layout, to float32 rounding
        plain = FastPath.for_spec(TrainSpec(), CPU).prepare_model(method.build_model())
        plain.load_state_dict(model.state_dict())
        model.eval(), plain.eval()
        x = {"a": torch.randn(2, 1, 16, 16), "b": torch.randn(2, 4)}
        assert torch.allclose(method.eval_logits(model, fast.batch_layout(x))[0],
                              method.eval_logits(plain, x)[0], atol=1e-5)


def test_the_run_record_says_which_speed_options_took_effect(tmp_path):
    result = bbench.run("Baseline", "mfeat", output_root=str(tmp_path), epochs=1, progress=False,
                        **{"dataset.options": {"subsample_per_class": 10}, "batch_size": 16,
                           "train.channels_last": True})
    assert result.environment["fast_path"] == {
        "channels_last": True, "compile": False, "deterministic": True, "cudnn_benchmark": False,
        "reuse_host_memory": host_memory.available(), "pin_memory": False, "num_workers": 0,
        "prefetch_factor": None, "precision": "fp32"}
    assert result.metrics["fit_seconds"] >= result.metrics["train_seconds"] > 0


@pytest.mark.slow
def test_compiled_encoders_train_to_the_same_weights_names_and_close_numbers(tmp_path):
    kwargs = {"epochs": 2, "progress": False, "batch_size": 16, "train.flops": "off",
              "dataset.options": {"subsample_per_class": 10}}
    eager = bbench.run("Baseline", "mfeat", output_root=str(tmp_path / "eager"), **kwargs)
    compiled = bbench.run("Baseline", "mfeat", output_root=str(tmp_path / "compiled"),
                          **{**kwargs, "train.compile": True})
    assert compiled.environment["fast_path"]["compile"] is True
    a = torch.load(eager.run_dir / "best_model.pt")
    b = torch.load(compiled.run_dir / "best_model.pt")
    assert set(a) == set(b)  # in-place compilation: checkpoints keep their parameter names
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_each_modalitys_training_accuracy_is_counted_on_request_and_changes_nothing_trained():
    """`train.modality_train_acc`: off by default (the fused `train_acc` alone), on adds
    `train_acc_<m>` for every modality of the model; the weights and every other record entry
    are the same either way (why a resume may switch it, config/identity.py)."""
    off, on = trainer(), trainer(modality_train_acc=True)
    fit_off, fit_on = off.fit(), on.fit()
    per_modality = {f"train_acc_{m}" for m in INFO.modalities}
    for a, b in zip(fit_off.history, fit_on.history):
        assert 0 <= a["train_acc"] <= 1 and not per_modality & a.keys()
        assert per_modality <= b.keys() and all(0 <= b[k] <= 1 for k in per_modality)
        same = a.keys() - {"seconds"}
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
    state_off, state_on = off.model.state_dict(), on.model.state_dict()
    assert all(torch.equal(state_off[k], state_on[k]) for k in state_off)
