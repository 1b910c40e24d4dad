"""MMTM blocks between encoder stages, and the multimodal model that runs its encoders stage
by stage with a block after each aligned stage (methods.md §5.4; Joze et al., CVPR 2020).

A block sees the M stage outputs F_m at one depth. It squeezes each to a per-sample channel
descriptor q_m ∈ R^{B×C_m} (the mean over every non-channel axis, and over the clip's frames
when an encoder folded them into the batch; for a 2-D output [B, C] the squeeze is the
identity), forms a = ReLU(W_sq [q_1; …; q_M] + b_sq) with ⌊2 Σ_m C_m / ratio⌋ units, and
gates each modality with its own g_m = sigmoid(W_m^ex a + b_m^ex), broadcast back over the
non-channel axes (and the frames) of F_m. Each block keeps, per modality, the running mean
ḡ_m of the batch-mean gate, a buffer updated in training forwards only, so evaluation never
changes it and a checkpoint carries it. A caller may name one modality c whose gate is
replaced by ḡ_c (after this forward's update, detached): F_c then receives nothing from the
other modalities in this forward, which is how a modality is cut off from the cross-modal
path for a few steps.

Alignment. Encoder m declares its fusion points P_m (`StagedEncoder.fusion_points`:
ResNet18 layer1–4, the MLP's hidden layers, the Transformer/ViT blocks, BERT's pooled
output). The model has L = min_m |P_m| blocks; block ℓ follows, in every modality, the
ℓ-th of its *last* L points. Encoders of equal depth are matched stage by stage, and a
deeper encoder fuses its deepest stages, so the last block always acts just before every
encoder's pooling, and the first blocks of a deep encoder run without cross-modal input.
BERT runs as one stage (its layers stay inside the pretrained module, whose checkpoint
layout bbench loads unchanged), so a model with a BERT modality has a single block, after
the pooled text output and every other encoder's last stage (BalanceMM's text-vs-audio
model instead fuses BERT's last four layers with ResNet18's four stages).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from bbench.data.base import Batch
from bbench.models.fusion import FusionHead
from bbench.models.modes import eval_mode
from bbench.models.multimodal import MultimodalModel
from bbench.models.staged import StagedEncoder


def channel_squeeze(y: torch.Tensor, channel_axis: int, frames: int) -> torch.Tensor:
    """q [B, C]: the mean of a stage output [B·frames, …] over every axis but the channel one
    (its frames included); the identity for a 2-D output [B, C]."""
    moved = y.movedim(channel_axis, -1)
    return moved.reshape(moved.shape[0] // frames, -1, moved.shape[-1]).mean(1)


def channel_gate(y: torch.Tensor, gate: torch.Tensor, channel_axis: int,
                 frames: int) -> torch.Tensor:
    """y ⊙ gate broadcast over the non-channel axes: `gate` is per sample [B, C] (repeated
    over each sample's frames) or shared [C] (the same for every row)."""
    axis = channel_axis % y.dim()
    shape = [1] * y.dim()
    shape[axis] = y.shape[axis]
    if gate.dim() == 1:
        return y * gate.view(shape)
    samples = y.shape[0] // frames
    per_frame = y.reshape(samples, frames, *y.shape[1:])
    return (per_frame * gate.view(samples, 1, *shape[1:])).reshape(y.shape)


class MMTM(nn.Module):
    """One multimodal transfer block over the stage outputs of M modalities (in model order)."""

    def __init__(self, channels: Sequence[int], ratio: int) -> None:
        super().__init__()
        total = sum(channels)
        hidden = 2 * total // ratio
        if hidden < 1:
            raise ValueError(f"MMTM: ratio={ratio} leaves no squeeze unit for {total} channels; "
                             f"need ratio <= {2 * total}")
        self.channels = tuple(channels)
        self.squeeze = nn.Linear(total, hidden)
        self.excite = nn.ModuleList(nn.Linear(hidden, c) for c in channels)
        for i, c in enumerate(channels):
            self.register_buffer(f"mean_gate_{i}", torch.zeros(c))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def mean_gate(self, index: int) -> torch.Tensor:
        """ḡ_m of modality `index` (C_m,)."""
        return getattr(self, f"mean_gate_{index}")

    def gates(self, squeezed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Live gates g_m = sigmoid(W_m^ex ReLU(W_sq [q_1; …; q_M] + b_sq) + b_m^ex), [B, C_m]."""
        a = torch.relu(self.squeeze(torch.cat(list(squeezed), 1)))
        return [torch.sigmoid(excite(a)) for excite in self.excite]

    def forward(self, outputs: Sequence[torch.Tensor], layouts: Sequence[tuple[int, int]],
                caring: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(gated stage outputs, mean live gate of each modality [M]).

        `layouts[m]` is (channel axis, frames per sample) of outputs[m]. In training mode
        every ḡ_m is first updated with this batch's mean gate: ḡ ← (n·ḡ + mean_i g_i)/(n + 1),
        n the block's earlier updates. Modality `caring` is then gated by ḡ_caring (no graph)
        instead of its live gate.
        """
        gates = self.gates([channel_squeeze(y, *layout) for y, layout in zip(outputs, layouts)])
        if self.training:
            with torch.no_grad():
                n = self.updates.to(torch.float32)
                for i, g in enumerate(gates):
                    mean = self.mean_gate(i)
                    mean.copy_((n * mean + g.detach().float().mean(0)) / (n + 1))
                self.updates += 1
        used = [self.mean_gate(caring).to(g.dtype, copy=True) if i == caring else g
                for i, g in enumerate(gates)]
        gated = [channel_gate(y, g, *layout) for y, g, layout in zip(outputs, used, layouts)]
        return gated, torch.stack([g.detach().float().mean() for g in gates])


class MMTMModel(MultimodalModel):
    """Staged encoders with an MMTM block after each aligned stage, then the fusion head.

    `encode` (and so `forward`, training and evaluation alike) runs the live gates;
    `encode_gated` also takes the caring modality and returns the mean live gates. The
    features h_m depend on every modality's input, so the model is not separable: Shapley
    evaluates it by input-masked passes.
    """

    separable = False

    def __init__(self, modalities: Sequence[str], encoders: Mapping[str, nn.Module],
                 head: FusionHead, input_shapes: Mapping[str, tuple[int, ...]],
                 input_dtypes: Mapping[str, torch.dtype], ratio: int) -> None:
        super().__init__(modalities, encoders, head)
        for m in self.modalities:
            if not isinstance(self.encoders[m], StagedEncoder):
                raise TypeError(f"MMTM blocks need staged encoders; the encoder of {m!r} "
                                f"({type(self.encoders[m]).__name__}) is not a StagedEncoder")
        depth = min(len(self.encoders[m].fusion_points) for m in self.modalities)
        if depth < 1:
            raise ValueError("MMTM blocks need every encoder to declare a fusion point")
        self.points: tuple[tuple[int, ...], ...] = tuple(
            tuple(self.encoders[m].fusion_points[-depth:]) for m in self.modalities)
        channels = self._stage_channels(input_shapes, input_dtypes)
        self.blocks = nn.ModuleList(MMTM([c[block] for c in channels], ratio)
                                    for block in range(depth))

    def _stage_channels(self, input_shapes: Mapping[str, tuple[int, ...]],
                        input_dtypes: Mapping[str, torch.dtype]) -> list[list[int]]:
        """C_m^ℓ at every chosen point, read from one eval-mode pass of two zero samples."""
        channels = []
        with torch.no_grad():
            for m, points in zip(self.modalities, self.points):
                encoder: StagedEncoder = self.encoders[m]
                with eval_mode(encoder):
                    x = torch.zeros((2, *input_shapes[m]), dtype=input_dtypes.get(m, torch.float32))
                    y, ctx = encoder.enter(x)
                    widths = []
                    for j in range(points[-1] + 1):
                        y = encoder.stages[j](y)
                        if j in points:
                            if y.shape[0] != 2 * encoder.clip_frames(ctx):
                                raise ValueError(f"encoder of {m!r}: stage {j} output has "
                                                 f"{y.shape[0]} rows for 2 samples")
                            widths.append(int(y.shape[encoder.channel_axis]))
                channels.append(widths)
        return channels

    def excitation_parameters(self, index: int) -> list[nn.Parameter]:
        """(W_m^ex, b_m^ex) of every block, for modality `index`."""
        return [p for block in self.blocks for p in block.excite[index].parameters()]

    def squeeze_parameters(self) -> list[nn.Parameter]:
        """The shared (W_sq, b_sq) of every block."""
        return [p for block in self.blocks for p in block.squeeze.parameters()]

    def encode_gated(self, batch: Batch, present: Sequence[bool] | None = None,
                     caring: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(h_m for every modality, mean live gate of each modality over the blocks [M]).

        Modalities with present[m] False get a zero raw input; `caring` names the modality
        gated by its running mean in every block.
        """
        encoders = [self.encoders[m] for m in self.modalities]
        ys, ctxs = [], []
        for i, (m, encoder) in enumerate(zip(self.modalities, encoders)):
            x = batch[m]
            if present is not None and not present[i]:
                x = torch.zeros_like(x)
            y, ctx = encoder.enter(x)
            ys.append(y)
            ctxs.append(ctx)
        layouts = [(e.channel_axis, e.clip_frames(c)) for e, c in zip(encoders, ctxs)]
        done = [0] * len(encoders)
        gate_sums = []
        for block_index, block in enumerate(self.blocks):
            for i, encoder in enumerate(encoders):
                point = self.points[i][block_index]
                ys[i] = _run_stages(encoder, ys[i], done[i], point + 1)
                done[i] = point + 1
            ys, gate_means = block(ys, layouts, caring)
            gate_sums.append(gate_means)
        features = [encoder.exit(_run_stages(encoder, y, start, len(encoder.stages)), ctx)
                    for encoder, y, start, ctx in zip(encoders, ys, done, ctxs)]
        return features, torch.stack(gate_sums).mean(0)

    def encode(self, batch: Batch, present: Sequence[bool] | None = None) -> list[torch.Tensor]:
        return self.encode_gated(batch, present)[0]


def _run_stages(encoder: StagedEncoder, y: Any, start: int, stop: int) -> Any:
    """The encoder's stages start … stop − 1 applied to y."""
    for j in range(start, stop):
        y = encoder.stages[j](y)
    return y
