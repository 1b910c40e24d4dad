"""The staged-encoder contract every encoder follows (the MLP and every backbone).

`forward(x) == exit(stages(enter(x)), ctx)` where `enter` reshapes the raw batch (e.g.
folds the time axis of a clip into the batch), `stages` is an `nn.Sequential` of the
encoder's blocks (the points between them are where fusion blocks such as MMTM can be
inserted) and `exit` pools the last stage's output into h ∈ R^{B×out_dim} (spatial pooling,
then the mean over the clip's frames). For such blocks an encoder also declares where they
may go (`fusion_points`), the channel axis of its stage outputs (`channel_axis`) and how many
rows of a stage output belong to one sample (`clip_frames`, for clips folded into the
batch). It lives outside `backbones/` so that the encoder registry, which the backbones
register into, can use it without an import cycle.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class StagedEncoder(nn.Module):
    """Base of the backbones: `out_dim`, `stages`, and the enter → stages → exit split."""

    out_dim: int
    stages: nn.Sequential
    channel_axis: int = 1
    """Channel axis of every stage output: 1 for [N, C] and [N, C, H, W], -1 for token
    sequences [N, L, C]. Never 0, the (possibly frame-folded) batch axis."""

    @property
    def fusion_points(self) -> tuple[int, ...]:
        """Indices of the stages after which a cross-modal block may act, in order (default:
        every stage). Backbones leave out stems and embeddings, which are not blocks."""
        return tuple(range(len(self.stages)))

    def clip_frames(self, ctx: Any) -> int:
        """Rows of a stage output per sample (T when `enter` folded a clip's T frames into
        the batch, sample-major), so that a stage output [B·T, ...] maps back to [B, T, ...]."""
        return 1

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Raw batch → input of the first stage, plus whatever `exit` needs (e.g. B and T)."""
        return x, None

    def exit(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Output of the last stage → h (B, out_dim)."""
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, ctx = self.enter(x)
        return self.exit(self.stages(y), ctx)
