"""`transformer`: the CMU-MOSEI feature-sequence encoder.

(L, D) feature sequence → Conv1d (kernel 1) projection to d_model → sinusoidal position
encoding → `layers` post-norm Transformer encoder layers (`heads` heads) → the hidden state
at the last time step, h ∈ R^{d_model} (1024 by default).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bbench.config.fields import param
from bbench.models.staged import StagedEncoder
from bbench.models.encoders import ENCODERS, EncoderEntry


@dataclass(frozen=True)
class TransformerOptions:
    d_model: int = param(1024, ge=1, doc="width of the projection and of every layer (= out_dim)")
    layers: int = param(2, ge=1, doc="Transformer encoder layers")
    heads: int = param(4, ge=1, doc="attention heads; must divide d_model")
    dropout: float = param(0.1, ge=0, lt=1, doc="dropout in attention, feed-forward and after "
                                                "the position encoding")
    feedforward: int = param(512, ge=1, doc="hidden width of each layer's feed-forward block "
                                            "(512 as in the public toolkit's encoder)")
    positional: bool = True
    pooling: Literal["last", "first", "mean"] = "last"


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention is all you need", (length, d_model)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    return table


class _Projection(nn.Module):
    """(B, L, D) → Conv1d(D, d_model, 1) → (B, L, d_model) + position encoding, dropout."""

    def __init__(self, input_dim: int, length: int, options: TransformerOptions) -> None:
        super().__init__()
        self.conv = nn.Conv1d(input_dim, options.d_model, kernel_size=1, bias=False)
        self.positional = options.positional
        self.d_model = options.d_model
        self.register_buffer("table", sinusoidal_encoding(length, options.d_model), persistent=False)
        self.dropout = nn.Dropout(options.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        if self.positional:
            length = x.shape[1]
            table = self.table if length <= self.table.shape[0] else \
                sinusoidal_encoding(length, self.d_model).to(x.device)
            x = x + table[:length].to(x.dtype)
        return self.dropout(x)


class TransformerEncoder(StagedEncoder):
    """stages = proj, layer0 … layer{n-1}; exit = the state at the last (first/mean) step."""

    def __init__(self, input_shape: tuple[int, ...], options: TransformerOptions) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"encoder transformer: needs per-sample feature sequences (L, D), "
                             f"got shape {tuple(input_shape)}")
        if options.d_model % options.heads:
            raise ValueError(f"encoder transformer: heads={options.heads} must divide "
                             f"d_model={options.d_model}")
        length, input_dim = input_shape
        blocks: list[tuple[str, nn.Module]] = [("proj", _Projection(input_dim, length, options))]
        for i in range(options.layers):
            blocks.append((f"layer{i}", nn.TransformerEncoderLayer(
                options.d_model, options.heads, dim_feedforward=options.feedforward,
                dropout=options.dropout, activation="relu", batch_first=True)))
        self.stages = nn.Sequential(OrderedDict(blocks))
        self.pooling = options.pooling
        self.input_dim = input_dim
        self.out_dim = options.d_model

    channel_axis = -1  # stage outputs are sequences (B, L, d_model)

    @property
    def fusion_points(self) -> tuple[int, ...]:
        """After each Transformer layer; the input projection is not a layer."""
        return tuple(range(1, len(self.stages)))

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"encoder transformer: expected a batch (B, L, {self.input_dim}), "
                             f"got {tuple(x.shape)}")
        return x.to(self.stages.proj.conv.weight.dtype), None

    def exit(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.pooling == "last":
            return y[:, -1]
        if self.pooling == "first":
            return y[:, 0]
        return y.mean(dim=1)


def _make(input_shape: tuple[int, ...], options: TransformerOptions) -> nn.Module:
    return TransformerEncoder(input_shape, options)


ENCODERS.add("transformer", EncoderEntry(
    "transformer", _make, TransformerOptions,
    "Conv1d projection + Transformer encoder on (L, D) feature sequences → d_model (last step)"))
