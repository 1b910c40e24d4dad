"""`vit_b16`: torchvision's ViT-B/16 as a per-frame encoder (class token → 768-d).

The modules are those of `torchvision.models.vit_b_16(weights=None)`, with the
classification heads removed. Frames must be 224×224 (the patch grid and the position
embeddings of ViT-B/16 are fixed for that size). Clips (T, 3, 224, 224) are folded into the
batch, encoded per frame and averaged over time, like `resnet18`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from bbench.config.fields import param
from bbench.models.staged import StagedEncoder
from bbench.models.backbones.common import (
    fold_time,
    image_layout,
    load_checked,
    pool_time,
    read_state_dict,
)
from bbench.models.encoders import ENCODERS, EncoderEntry

IMAGE_SIZE = 224


@dataclass(frozen=True)
class ViTB16Options:
    pretrained_path: str | None = param(None, doc="local .pth state dict with torchvision "
                                                  "vit_b_16 keys (heads.* ignored)")
    layers: int = param(12, ge=1, le=12, doc="encoder blocks kept (12 = the full ViT-B/16); "
                                             "fewer keeps the first blocks, e.g. for cheap tests")
    dropout: float = param(0.0, ge=0, lt=1, doc="dropout of the embeddings and blocks")


class _PatchEmbed(nn.Module):
    """Patchify (conv_proj), prepend the class token, add position embeddings: (N, 197, 768)."""

    def __init__(self, vit: torchvision.models.VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ViTB16Encoder(StagedEncoder):
    """stages = embed, layer0 … layer{L-1}; exit = final LayerNorm, class token, time mean."""

    def __init__(self, input_shape: tuple[int, ...], options: ViTB16Options) -> None:
        super().__init__()
        self.clip, _ = image_layout("vit_b16", input_shape, 3)
        if tuple(input_shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"encoder vit_b16: needs {IMAGE_SIZE}×{IMAGE_SIZE} frames, got "
                             f"{input_shape[-2]}×{input_shape[-1]} (input shape {tuple(input_shape)}); "
                             f"set the dataset's image_size={IMAGE_SIZE}")
        vit = torchvision.models.vit_b_16(weights=None, dropout=options.dropout)
        vit.heads = nn.Identity()
        if options.pretrained_path:
            state = read_state_dict(options.pretrained_path, "vit_b16")
            load_checked(vit, state, options.pretrained_path, "vit_b16", ignore=("heads.",))
        blocks = list(vit.encoder.layers)[: options.layers]
        self.stages = nn.Sequential(OrderedDict(
            [("embed", _PatchEmbed(vit))] + [(f"layer{i}", b) for i, b in enumerate(blocks)]))
        self.norm = vit.encoder.ln
        self.out_dim = vit.hidden_dim

    channel_axis = -1  # stage outputs are token sequences (N, 197, 768)

    @property
    def fusion_points(self) -> tuple[int, ...]:
        """After each encoder block (layer0 …); the patch embedding is not a block."""
        return tuple(range(1, len(self.stages)))

    def clip_frames(self, ctx: Any) -> int:
        return ctx[1]

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return fold_time("vit_b16", x, self.clip)

    def exit(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        return pool_time(self.norm(y)[:, 0], ctx)


def _make(input_shape: tuple[int, ...], options: ViTB16Options) -> nn.Module:
    return ViTB16Encoder(input_shape, options)


ENCODERS.add("vit_b16", EncoderEntry(
    "vit_b16", _make, ViTB16Options,
    "torchvision ViT-B/16 → 768-d class token; 224×224 images or frame clips, time-pooled"))
