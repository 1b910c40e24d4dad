"""Fake (meta) implementations of torch.ops.bbench.*, for FakeTensor tracing (torch.compile,
torch.export) and ``torch.library.opcheck``. Registered by the extension loader, which runs once
per process (bbench.ops._ext.state)."""
from __future__ import annotations

import torch

from bbench.ops import reference


def register() -> None:
    @torch.library.register_fake("bbench::grad_scale_")
    def _grad_scale_fake(grads, group, coeff, noise_std=None, seed=None):
        torch._check(group.dim() == 1 and group.shape[0] == len(grads),
                     lambda: f"grad_scale_: group must have shape [{len(grads)}], got {tuple(group.shape)}")
        return None

    @torch.library.register_fake("bbench::subset_correct")
    def _subset_correct_fake(contrib, absent, bias, labels):
        torch._check(contrib.dim() == 3,
                     lambda: f"subset_correct: contrib must have shape [M, N, K], got {tuple(contrib.shape)}")
        m, n, _ = contrib.shape
        torch._check(m <= 16, lambda: f"subset_correct: at most 16 modalities, got M = {m}")
        s = 2 ** int(m)
        return (contrib.new_empty((n, s), dtype=torch.bool),
                contrib.new_empty((s,), dtype=torch.int64))

    @torch.library.register_fake("bbench::pixel_lookup")
    def _pixel_lookup_fake(pixels, table):
        reference.check_pixel_lookup_args(pixels, table)  # shapes, dtypes, devices only
        return pixels.new_empty(pixels.shape, dtype=torch.float32)
