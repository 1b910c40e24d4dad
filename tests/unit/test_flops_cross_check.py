"""Our FLOP counts (torch's FlopCounterMode) against an independent counter, fvcore.

fvcore counts one FLOP per multiply-add of convolutions and matrix products and adds
element-wise terms (batch norm, pooling) that FlopCounterMode leaves out; bbench reports
FLOPs = 2 x multiply-adds (metrics.md). So on every encoder, bbench's forward count must be
exactly twice fvcore's multiply-add count: a check that the encoders' reshapes (time folded
into the batch, channel adaptation) hide no work from either counter.
"""
from __future__ import annotations

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from bbench.config.specs import EncoderSpec
from bbench.engine.flops import count_forward_flops
from bbench.models import build_encoder

MULTIPLY_ADD_OPS = ("conv", "linear", "matmul", "bmm", "addmm", "einsum")


def fvcore_multiply_adds(module: torch.nn.Module, x: torch.Tensor) -> int:
    analysis = FlopCountAnalysis(module, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    return sum(v for op, v in by_op.items() if op in MULTIPLY_ADD_OPS)


@pytest.mark.parametrize("name,shape,options", [
    ("mlp", (76,), {"hidden": [64, 32]}),
    ("resnet18", (1, 64, 48), {}),          # an audio spectrogram
    ("resnet18", (2, 3, 32, 32), {}),       # two frames, pooled over time
    ("resnet18", (3, 2, 32, 32), {}),       # optical flow (u, v)
])
def test_forward_flops_are_twice_fvcores_multiply_adds(name, shape, options):
    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec(name, options), shape, "m").eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ours = count_forward_flops(encoder, x)
        theirs = fvcore_multiply_adds(encoder, x)
    assert theirs > 0
    assert ours == 2 * theirs
