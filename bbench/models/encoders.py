"""Encoder registry: one module per modality mapping raw input to a feature vector h_m.

Every encoder is a `StagedEncoder` (bbench/models/staged.py): `out_dim` (d_m, read by
heads and methods, never hard-coded), `stages` (its sequential blocks, for methods that
insert fusion blocks between stages) and the `enter` -> stages -> `exit` split.
Image, audio, sequence and text backbones register here too, with the same contract.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from bbench.config.fields import build, param
from bbench.config.specs import EncoderSpec
from bbench.models.staged import StagedEncoder
from bbench.registry import Registry


@dataclass(frozen=True)
class EncoderEntry:
    """`make(input_shape, options)` builds the encoder for one modality's per-sample shape."""

    name: str
    make: Callable[[tuple[int, ...], Any], nn.Module]
    options: type
    description: str = ""


ENCODERS: Registry[EncoderEntry] = Registry("encoder")


@dataclass(frozen=True)
class MLPOptions:
    hidden: tuple[int, ...] = (128, 64)
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = param(0.0, ge=0, lt=1)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLPEncoder(StagedEncoder):
    """Flattened input -> Linear/activation stages; the last stage's output is h_m.

    A staged encoder like every backbone: `enter` flattens, `stages` are the Linear blocks
    (where cross-modal blocks such as Greedy's MMTM go), `exit` is the identity.
    """

    def __init__(self, in_dim: int, options: MLPOptions) -> None:
        super().__init__()
        if not options.hidden or any(h < 1 for h in options.hidden):
            raise ValueError(f"encoder mlp: hidden={options.hidden} needs one or more widths >= 1")
        layers: list[nn.Module] = []
        width = in_dim
        for out in options.hidden:
            block: list[nn.Module] = [nn.Linear(width, out), _ACTIVATIONS[options.activation]()]
            if options.dropout > 0:
                block.append(nn.Dropout(options.dropout))
            layers.append(nn.Sequential(*block))
            width = out
        self.stages = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = width

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.flatten(1).to(self.stages[0][0].weight.dtype), None


def _make_mlp(input_shape: tuple[int, ...], options: MLPOptions) -> nn.Module:
    return MLPEncoder(math.prod(input_shape), options)


ENCODERS.add("mlp", EncoderEntry("mlp", _make_mlp, MLPOptions, "MLP on the flattened input"))


def build_encoder(spec: EncoderSpec, input_shape: tuple[int, ...], modality: str) -> nn.Module:
    """Build and validate the encoder for `modality`; it must report `out_dim`."""
    entry = ENCODERS.get(spec.type)
    options = build(entry.options, spec.options, f"encoder {entry.name} ({modality})")
    encoder = entry.make(tuple(input_shape), options)
    if not isinstance(getattr(encoder, "out_dim", None), int):
        raise TypeError(f"encoder {entry.name} does not report an integer out_dim")
    return encoder
