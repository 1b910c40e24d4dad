"""Microbenchmarks of the bbench kernels against their references (see conftest.py for how to run).

Groups (pytest-benchmark ``group``), each with its implementations side by side:

- ``grad_scale_/<grads>/noise=<bool>`` with impl ``ext`` (torch.ops.bbench.grad_scale_),
  ``ref`` (the ``_foreach`` reference), ``loop`` (per-parameter Python loop reading each
  tensor's std with ``.item()``, the pattern of public toolkits) and, without noise,
  ``loop-mul`` (the same loop without the std read), on the encoder gradients of an
  audio-visual ResNet18 pair (22.3M parameters, 120 tensors) and of the mfeat MLP pair
  (d -> 128 -> 64 for d = 216 and d = 6; 45K parameters, 8 tensors);
- ``subset_correct/M=<m>/K=<k>`` (N = 10 000) with impl ``ext`` and ``ref``;
- ``normalise_pixels/<layout>``: a CREMA-D batch of uint8 frames (32 clips × 2 frames × 3 ×
  224 × 224) to normalised float32, impl ``lookup`` (`ops.pixel_lookup` through the
  normalisation table, what `normalise_pixels` runs with the extension) and ``elementwise``
  (`normalise_elementwise`, its definition and the path without it), for the channels-last
  frames the resize leaves and for contiguous ones; host memory reuse on, as in a run;
- ``shapley/resnet18-av/M=<m>`` with impl ``one-pass`` (one encoder pass + M zero-input
  passes + subset_correct) and ``masked`` (2^M passes of the whole model with raw inputs
  zeroed): bbench's own `subset_correct_counts` on its paths ``one-pass-linear`` and
  ``masked-passes``, for a Baseline model of bbench's ResNet18 encoders and concat head.
"""
from __future__ import annotations

import pytest
import torch

from bbench import ops
from bbench.benchmarking.kernels import loop_mul, loop_with_std
from bbench.config.specs import EncoderSpec, ModelSpec
from bbench.data.base import DataInfo, TensorMultimodalDataset
from bbench.data.transforms import normalisation_table, normalise_elementwise
from bbench.engine import host_memory
from bbench.engine.evaluate import eval_loader
from bbench.methods.base import RunContext
from bbench.methods.registry import build_method
from bbench.metrics.shapley import subset_correct_counts
from bbench.models import build_encoder

ROUNDS_GRAD = {"resnet18-av": 15, "mlp-mfeat": 200}
SHAPLEY_N = 48  # samples per evaluation batch
NUM_CLASSES = 6  # CREMA-D
CPU = torch.device("cpu")
# Audio spectrogram, one visual frame, and (for M = 3) an optical-flow stream.
AV_INPUTS = {"audio": (1, 257, 188), "visual": (3, 224, 224), "flow": (2, 224, 224)}
# (encoder, input shape) of each modality whose gradients grad_scale_ scales.
GRAD_ENCODERS = {"resnet18-av": [EncoderSpec("resnet18", {"in_channels": 1}), EncoderSpec("resnet18")],
                 "mlp-mfeat": [EncoderSpec("mlp"), EncoderSpec("mlp")]}
GRAD_SHAPES = {"resnet18-av": [AV_INPUTS["audio"], AV_INPUTS["visual"]], "mlp-mfeat": [(216,), (6,)]}


def _need_ext():
    info = ops.extension_info()
    if "cpu" not in info["backends"]:
        pytest.skip(f"bbench extension not available: {info['error']}")


def encoder_grads(kind: str):
    """(grads, group, host groups) of the encoders' parameters, gradient-shaped random tensors."""
    grads, group = [], []
    for j, (spec, shape) in enumerate(zip(GRAD_ENCODERS[kind], GRAD_SHAPES[kind])):
        for p in build_encoder(spec, shape, f"m{j}").parameters():
            grads.append(torch.randn_like(p))
            group.append(j)
    return grads, torch.tensor(group), group


# ---- grad_scale_ --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["ext", "ref", "loop", "loop-mul"])
@pytest.mark.parametrize("noise", [False, True], ids=["noise=False", "noise=True"])
@pytest.mark.parametrize("kind", ["resnet18-av", "mlp-mfeat"])
def test_grad_scale(benchmark, kind, noise, impl):
    if impl == "loop-mul" and noise:
        pytest.skip("loop-mul has no noise variant")
    if impl == "ext":
        _need_ext()
    benchmark.group = f"grad_scale_/{kind}/noise={noise}"
    grads, group, host_group = encoder_grads(kind)
    base = [g.clone() for g in grads]
    coeff = torch.tensor([0.9, 0.7])  # both != 1: the kernel may not skip a group
    host_coeff = coeff.tolist()
    noise_std = torch.tensor([1.0, 1.0]) if noise else None
    benchmark.extra_info.update(tensors=len(grads), elements=sum(g.numel() for g in grads))

    def reset():  # fresh gradients every round (repeated scaling would reach denormals)
        torch._foreach_copy_(grads, base)

    if impl == "ext":
        def run():
            ops.grad_scale_(grads, group, coeff, noise_std, seed=1, backend="ext")
    elif impl == "ref":
        def run():
            ops.grad_scale_(grads, group, coeff, noise_std, seed=1, backend="ref")
    elif impl == "loop":
        def run():
            loop_with_std(grads, host_group, host_coeff, noise)
    else:
        def run():
            loop_mul(grads, host_group, host_coeff)
    benchmark.pedantic(run, setup=reset, rounds=ROUNDS_GRAD[kind], warmup_rounds=2)


# ---- subset_correct -----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["ext", "ref"])
@pytest.mark.parametrize("k", [6, 31, 101, 309], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("m", [2, 3, 4], ids=lambda m: f"M={m}")
def test_subset_correct(benchmark, m, k, impl):
    if impl == "ext":
        _need_ext()
    n = 10_000
    benchmark.group = f"subset_correct/M={m}/K={k}"
    contrib = torch.randn(m, n, k)
    absent = torch.randn(m, k)
    bias = torch.randn(k)
    labels = torch.randint(0, k, (n,))
    out = benchmark.pedantic(ops.subset_correct, args=(contrib, absent, bias, labels),
                             kwargs={"backend": impl}, rounds=5 if impl == "ref" else 20,
                             warmup_rounds=1)
    assert out[1].shape == (1 << m,)


# ---- pixel normalisation -------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["lookup", "elementwise"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_normalise_pixels(benchmark, layout, impl):
    if impl == "lookup":
        _need_ext()
    benchmark.group = f"normalise_pixels/{layout}"
    was_reusing = host_memory.reusing()
    host_memory.set_host_memory_reuse(True)  # as a run's FastPath sets it (glibc only)
    frames = torch.randint(0, 256, (32, 2, 224, 224, 3), dtype=torch.uint8).movedim(-1, -3)
    if layout == "contiguous":
        frames = frames.contiguous()
    table = normalisation_table(3, CPU)
    run = ((lambda: ops.pixel_lookup(frames, table, backend="ext")) if impl == "lookup"
           else (lambda: normalise_elementwise(frames)))
    try:
        out = benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    finally:
        host_memory.set_host_memory_reuse(was_reusing)
    assert torch.equal(out, normalise_elementwise(frames))


# ---- Shapley end to end -------------------------------------------------------------------------

def av_setup(m: int):
    """A Baseline method and its model (bbench's ResNet18 encoders with random weights, concat
    head) on the first m streams of AV_INPUTS, and a loader of one batch of random inputs whose
    labels make some subsets right: the full model's own predictions, half of them shuffled."""
    names = tuple(AV_INPUTS)[:m]
    info = DataInfo("bench-av", names, NUM_CLASSES, {n: AV_INPUTS[n] for n in names},
                    {n: torch.float32 for n in names})
    spec = ModelSpec(encoders={n: EncoderSpec("resnet18", {"in_channels": AV_INPUTS[n][0]}) for n in names})
    method = build_method("Baseline", {}, RunContext(info, spec, 0, CPU))
    model = method.build_model().eval()
    inputs = {n: torch.randn(SHAPLEY_N, *AV_INPUTS[n]) for n in names}
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    labels[::2] = torch.randint(0, NUM_CLASSES, (SHAPLEY_N // 2,))
    loader = eval_loader(TensorMultimodalDataset(inputs, labels), SHAPLEY_N)
    return method, model, loader


@pytest.mark.parametrize("impl", ["one-pass", "masked"])
@pytest.mark.parametrize("m", [2, 3], ids=lambda m: f"M={m}")
def test_shapley_resnet18(benchmark, m, impl):
    _need_ext()
    benchmark.group = f"shapley/resnet18-av/M={m}"
    method, model, loader = av_setup(m)
    benchmark.extra_info.update(samples=SHAPLEY_N, modalities=m)
    paths = {"one-pass": "one-pass-linear", "masked": "masked-passes"}

    def counts(impl: str) -> torch.Tensor:
        return subset_correct_counts(method, model, loader, CPU, mask="input", path=paths[impl])[0]

    measured = benchmark.pedantic(counts, args=(impl,), rounds=5 if impl == "one-pass" else 2,
                                  warmup_rounds=1 if impl == "one-pass" else 0)
    # the fast path must give the same value function as the masked passes
    other = counts("masked" if impl == "one-pass" else "one-pass")
    assert torch.equal(measured, other), (measured, other)
