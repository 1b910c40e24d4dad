"""`resnet18`: torchvision's ResNet18 as a per-modality encoder (audio, RGB frames, flow).

The architecture is `torchvision.models.resnet18(weights=None)` with the classifier removed
(global average pool → 512-d) and, when the input has 1 or 2 channels, a stem convolution
with that many input channels. Spectrograms (1, T, 128) are one single-channel image; clips
(T, C, H, W) are folded into the batch, encoded frame by frame and averaged over time.
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
    CheckpointMismatchError,
    fold_time,
    image_layout,
    load_checked,
    pool_time,
    read_state_dict,
)
from bbench.models.encoders import ENCODERS, EncoderEntry


@dataclass(frozen=True)
class ResNet18Options:
    in_channels: int | None = param(None, ge=1, doc="input channels: 1 audio, 3 RGB, 2 flow; "
                                                    "unset = read from the input shape")
    pretrained_path: str | None = param(None, doc="local .pth state dict (torchvision ResNet18 "
                                                  "keys); 3-channel stems are adapted")


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Conv1 weights (64, C, 7, 7) of a checkpoint for a stem with `in_channels` inputs.

    A 3-channel (ImageNet) stem loaded into a 1- or 2-channel one: the filters are averaged
    over the colour channels and that mean is repeated for every input channel (the
    cross-modality initialisation of TSN for flow; for 1 channel, the grey-image filter).
    """
    if weight.shape[1] == in_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1)


class ResNet18Encoder(StagedEncoder):
    """stages = stem (conv1, bn1, relu, maxpool), layer1 … layer4; exit = avg pool, time mean."""

    def __init__(self, input_shape: tuple[int, ...], options: ResNet18Options) -> None:
        super().__init__()
        self.clip, channels = image_layout("resnet18", input_shape, options.in_channels)
        self.in_channels = channels
        net = torchvision.models.resnet18(weights=None)
        if channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()
        if options.pretrained_path:
            self._load(net, options.pretrained_path)
        self.stages = nn.Sequential(OrderedDict(
            stem=nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu,
                                           maxpool=net.maxpool)),
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 512

    def _load(self, net: nn.Module, path: str) -> None:
        state = read_state_dict(path, "resnet18")
        state = {_torchvision_key(k): v for k, v in state.items()}
        if "conv1.weight" in state and state["conv1.weight"].dim() == 4:
            w = state["conv1.weight"]
            if w.shape[1] == 3 and self.in_channels != 3:
                state["conv1.weight"] = adapt_stem(w, self.in_channels)
            elif w.shape[1] != self.in_channels:
                raise CheckpointMismatchError(
                    f"encoder resnet18: pretrained_path {path!r} has a {w.shape[1]}-channel stem "
                    f"(conv1.weight {tuple(w.shape)}); the encoder has {self.in_channels} input "
                    "channel(s), and only a 3-channel stem can be adapted")
        load_checked(net, state, path, "resnet18", ignore=("fc.",))

    @property
    def fusion_points(self) -> tuple[int, ...]:
        """After layer1 … layer4 (stages 1–4); the stem is not a residual stage."""
        return (1, 2, 3, 4)

    def clip_frames(self, ctx: Any) -> int:
        return ctx[1]

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return fold_time("resnet18", x, self.clip)

    def exit(self, y: torch.Tensor, ctx: Any) -> torch.Tensor:
        return pool_time(self.pool(y).flatten(1), ctx)


def _torchvision_key(key: str) -> str:
    """Accept checkpoints of a bbench resnet18 encoder too (stages.stem.conv1 → conv1)."""
    if key.startswith("stages.stem."):
        return key[len("stages.stem."):]
    if key.startswith("stages."):
        return key[len("stages."):]
    return key


def _make(input_shape: tuple[int, ...], options: ResNet18Options) -> nn.Module:
    return ResNet18Encoder(input_shape, options)


ENCODERS.add("resnet18", EncoderEntry(
    "resnet18", _make, ResNet18Options,
    "torchvision ResNet18 → 512-d; spectrograms (1, T, F) or frame clips (T, C, H, W), time-pooled"))
