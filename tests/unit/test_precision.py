"""Mixed precision (engine/precision.py) through the loop: autocast of the forward only,
float32 parameters and gradients, fp16 loss scaling that unscales every backward pass at
once (so methods read true gradients between passes), skipped steps on overflow, resume."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import bbench
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.config.specs import ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.precision import BACKOFF_FACTOR, INIT_SCALE, MixedPrecision
from bbench.engine.trainer import Trainer
from bbench.methods.base import Method, RunContext
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.testing.methods import toy_batch, toy_info
from bbench.testing.resume import interrupted_and_resumed

INFO = toy_info()
CPU = torch.device("cpu")
TINY = {"dataset.options": {"subsample_per_class": 10}, "epochs": 3, "batch_size": 16,
        "progress": False}


def trainer(precision: str, method: str = "Baseline", seed: int = 0) -> Trainer:
    batch = toy_batch(INFO, n=32)
    split = TensorMultimodalDataset({m: batch[m] for m in INFO.modalities}, batch["label"])
    m = build_method(method, {}, RunContext(INFO, ModelSpec(), 0, CPU))
    torch.manual_seed(seed)
    spec = TrainSpec(epochs=1, batch_size=8, progress=False, precision=precision,
                     optimizer=OptimizerSpec(lr=0.1))
    return Trainer(spec, TrainingData(INFO, split, split), m, m.build_model(), count_flops=False)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_the_forward_runs_in_the_precision_and_parameters_and_grads_stay_float32(precision, dtype):
    loop = trainer(precision)
    out = loop.method.train_step(loop, toy_batch(INFO, n=8), StepInfo(0, 0, 1, 0))
    assert out.out.logits.dtype == dtype
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in loop.model.parameters() if p.grad is not None)
    # the scoring accessor (method math, training accuracy) is float32 whatever the forward
    assert out.out.unimodal_scoring(0).dtype == torch.float32


def test_fp16_gradients_arrive_unscaled_and_close_to_fp32():
    batch = toy_batch(INFO, n=8)
    reference, half = trainer("fp32"), trainer("fp16")
    for loop in (reference, half):
        loop.zero_grad()
        with loop.autocast():
            out = loop.method.forward(loop.model, batch, StepInfo(0, 0, 1, 0))
            loss = F.cross_entropy(out.logits, batch["label"])
        loop.backward(loss)
    want, got = grads(reference.model), grads(half.model)
    assert half.precision.scale.item() == INIT_SCALE  # scaled by 2^16, yet:
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=2e-2, atol=1e-3), name


@settings(max_examples=10, deadline=None)
@given(passes=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_several_fp16_backward_passes_accumulate_each_unscaled_once(passes, seed):
    """Gradients of earlier passes are set aside during a pass: Σ of the unscaled parts."""
    loop = trainer("fp16", seed=seed)
    w = loop.model.head.fc.weight
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(w.shape, generator=g) for _ in range(passes)]
    loop.zero_grad()
    for t in targets:
        loop.backward((w * t).sum())  # ∂/∂w = t, exactly representable after unscaling
    assert torch.allclose(w.grad, torch.stack(targets).sum(0), rtol=1e-6, atol=1e-6)


def test_fp16_grads_helper_returns_unscaled_gradients():
    loop = trainer("fp16")
    w = loop.model.head.fc.weight
    (g,) = loop.grads((3.0 * w).sum(), [w])
    assert torch.equal(g, torch.full_like(w, 3.0))


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backs_off():
    loop = trainer("fp16")
    w = loop.model.head.fc.weight
    before = w.detach().clone()
    loop.zero_grad()
    loop.backward((w * float("inf")).sum())
    loop.optimizer_step()
    assert torch.equal(w.detach(), before)  # no update from a non-finite gradient
    assert loop.precision.skipped_steps == 1
    assert loop.precision.scale.item() == INIT_SCALE * BACKOFF_FACTOR
    loop.zero_grad()
    loop.backward(w.sum())  # a finite step afterwards updates again
    loop.optimizer_step()
    assert not torch.equal(w.detach(), before) and loop.precision.skipped_steps == 1


def test_fp32_and_bf16_have_no_loss_scaling():
    for precision in ("fp32", "bf16"):
        mp = MixedPrecision(precision, CPU)
        w = torch.ones(3, requires_grad=True)
        mp.backward((2 * w).sum(), [w])
        assert torch.equal(w.grad, torch.full((3,), 2.0)) and not mp.scaling


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        MixedPrecision("int8", CPU)
    with pytest.raises(SpecError, match="precision='tf32' is not allowed"):
        resolve_spec("Baseline", "mfeat", {"train.precision": "tf32"})


@pytest.mark.parametrize("method,params", [("Baseline", {}), ("MMPareto", {"start": 0}),
                                           ("MLA", {"start": 0})])
def test_fp16_runs_end_to_end_finite(method, params, tmp_path):
    """Baseline's one backward, MMPareto's autograd.grad per loss, MLA's M sub-steps."""
    result = bbench.run(method, "mfeat", output_root=str(tmp_path),
                        **{**TINY, **params, "train.precision": "fp16"})
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.metrics["acc"] > 0.5  # it learnt (10 classes: chance is 0.1)
    assert result.environment["fast_path"]["precision"] == "fp16"


@pytest.mark.slow
def test_an_fp16_run_resumes_exactly_with_its_loss_scale(tmp_path):
    overrides = {**TINY, "epochs": 4, "train.precision": "fp16"}
    full = bbench.run("Baseline", "mfeat", output_root=str(tmp_path / "full"), **overrides)
    resumed = interrupted_and_resumed("Baseline", "mfeat", 1, output_root=str(tmp_path / "r"),
                                      **overrides)
    def numbers(history):  # everything but the timings
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert numbers(resumed.history) == numbers(full.history)
    assert resumed.metrics["acc"] == full.metrics["acc"]


def test_a_method_loss_under_autocast_can_leave_it_for_float32_math():
    """Method.scores runs in float32 even on low-precision features inside autocast."""
    loop = trainer("bf16")
    batch = toy_batch(INFO, n=8)
    with loop.autocast():
        out = Method.forward(loop.method, loop.model, batch, StepInfo(0, 0, 1, 0))
        scores = loop.method.scores(loop.model, out.features, batch["label"])
    assert out.features[0].dtype == torch.bfloat16 and scores.dtype == torch.float32
