"""Microbenchmarks of the bbench kernels against their references (see conftest.py for how to run).

Groups (pytest-benchmark ``group``), each with its implementations side by side:

- ``grad_scale_/<grads>/noise=<bool>`` with impl ``ext`` (torch.ops.bbench.grad_scale_),
  ``ref`` (the ``_foreach`` reference), ``loop`` (per-parameter Python loop reading each
  tensor's std with ``.item()``, the pattern of public toolkits) and, without noise,
  ``loop-mul`` (the same loop without the std read), on the encoder gradients of an
  audio-visual ResNet18 pair (22.3M parameters, 120 tensors) and of the mfeat MLP pair
  (d -> 128 -> 64 for d = 216 and d = 6; 45K parameters, 8 tensors);
- ``subset_correct/M=<m>/K=<k>`` (N = 10 000) with impl ``ext`` and ``ref``;
- ``shapley/resnet18-av/M=<m>`` with impl ``one-pass`` (one encoder pass + M zero-input
  passes + subset_correct) and ``masked`` (2^M passes of the whole model with raw inputs zeroed).
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from bbench import ops

ROUNDS_GRAD = {"resnet18-av": 15, "mlp-mfeat": 200}
SHAPLEY_N = 48  # samples per evaluation batch
NUM_CLASSES = 6  # CREMA-D


def _need_ext():
    info = ops.extension_info()
    if "cpu" not in info["backends"]:
        pytest.skip(f"bbench extension not available: {info['error']}")


# ---- models -----------------------------------------------------------------------------------

def resnet18_trunk(in_channels: int) -> torch.nn.Module:
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    m.fc = torch.nn.Identity()
    return m


def mlp(d: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))


class LateFusion(torch.nn.Module):
    """Encoders + concat head: z = W [h_1; ...; h_M] + b."""

    def __init__(self, encoders: list[torch.nn.Module], feat_dim: int, num_classes: int):
        super().__init__()
        self.encoders = torch.nn.ModuleList(encoders)
        self.feat_dim = feat_dim
        self.head = torch.nn.Linear(feat_dim * len(encoders), num_classes)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([e(x) for e, x in zip(self.encoders, xs)], dim=1))


def encoder_grads(kind: str):
    """(grads, group, host groups) of the encoders' parameters, gradient-shaped random tensors."""
    encoders = ([resnet18_trunk(1), resnet18_trunk(3)] if kind == "resnet18-av" else [mlp(216), mlp(6)])
    grads, group = [], []
    for j, enc in enumerate(encoders):
        for p in enc.parameters():
            grads.append(torch.randn_like(p))
            group.append(j)
    return grads, torch.tensor(group), group


# ---- grad_scale_ --------------------------------------------------------------------------------

def loop_with_std(grads, groups, coeffs, noise):
    """The per-parameter loop of public toolkits (OGM-GE style): std read on the host."""
    for g, j in zip(grads, groups):
        std = g.std().item()
        g.mul_(coeffs[j])
        if noise:
            g.add_(torch.zeros_like(g).normal_(0, std + 1e-8))


def loop_mul(grads, groups, coeffs):
    for g, j in zip(grads, groups):
        g.mul_(coeffs[j])


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


# ---- Shapley end to end -------------------------------------------------------------------------

def av_model(m: int) -> tuple[LateFusion, list[torch.Tensor]]:
    """Audio (1 x 257 x 188 spectrogram), visual (3 x 224 x 224 frame) and, for M = 3, an
    optical-flow stream (2 x 224 x 224): ResNet18 trunks with random weights, concat head."""
    specs = [(1, (257, 188)), (3, (224, 224)), (2, (224, 224))][:m]
    model = LateFusion([resnet18_trunk(c) for c, _ in specs], 512, NUM_CLASSES).eval()
    xs = [torch.randn(SHAPLEY_N, c, *hw) for c, hw in specs]
    return model, xs


@torch.inference_mode()
def shapley_counts_one_pass(model: LateFusion, xs, labels) -> torch.Tensor:
    feats = [enc(x) for enc, x in zip(model.encoders, xs)]
    const = [enc(torch.zeros_like(x[:1])) for enc, x in zip(model.encoders, xs)]  # c_m = Enc_m(0)
    blocks = model.head.weight.split(model.feat_dim, dim=1)  # W_m
    contrib = torch.stack([h @ w.T for h, w in zip(feats, blocks)])
    absent = torch.stack([(c @ w.T)[0] for c, w in zip(const, blocks)])
    return ops.subset_correct(contrib, absent, model.head.bias, labels)[1]


@torch.inference_mode()
def shapley_counts_masked(model: LateFusion, xs, labels) -> torch.Tensor:
    counts = []
    for s in range(1 << len(xs)):
        inputs = [x if s >> j & 1 else torch.zeros_like(x) for j, x in enumerate(xs)]
        counts.append((model(inputs).argmax(1) == labels).sum())
    return torch.stack(counts)


@pytest.mark.parametrize("impl", ["one-pass", "masked"])
@pytest.mark.parametrize("m", [2, 3], ids=lambda m: f"M={m}")
def test_shapley_resnet18(benchmark, m, impl):
    _need_ext()
    benchmark.group = f"shapley/resnet18-av/M={m}"
    model, xs = av_model(m)
    # labels that make some subsets right: the full model's own predictions, half of them shuffled
    with torch.no_grad():
        labels = model(xs).argmax(1)
    labels[::2] = torch.randint(0, NUM_CLASSES, (SHAPLEY_N // 2,))
    benchmark.extra_info.update(samples=SHAPLEY_N, modalities=m)
    fn = shapley_counts_one_pass if impl == "one-pass" else shapley_counts_masked
    counts = benchmark.pedantic(fn, args=(model, xs, labels), rounds=5 if impl == "one-pass" else 2,
                                warmup_rounds=1 if impl == "one-pass" else 0)
    # the fast path must give the same value function as the masked passes
    other = (shapley_counts_masked if impl == "one-pass" else shapley_counts_one_pass)(model, xs, labels)
    assert torch.equal(counts, other), (counts, other)
