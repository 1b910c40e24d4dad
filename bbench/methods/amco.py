"""AMCo (methods.md §5.2): adaptive mask co-optimization.

The modality the fusion depends on most is made harder to fit: part of its logits on the fused
path are masked, while its own unimodal loss ("co-optimization") keeps it from degrading.

Model: the run's encoders and split head (z_m, with Σ_m z_m = z), followed by L*, a
Linear(K → K) with bias: out = L*(Σ_m z̃_m), where z̃_m = z_m ⊙ μ for a modality flagged
dependent and z̃_m = z_m otherwise. μ ∈ {0, 1}^K is one class mask per step, broadcast over
the batch and shared by every dependent modality.

Per step of an active epoch e:
1. p = sin(π/2 · min(ε, ℓ)/ε), n = ⌊pK⌋; μ has n zeros at uniformly random class positions
   (the method generator).
2. L = CE(out, y) + Σ_m CE(z_m, y), the unimodal terms on the *unmasked* z_m, so a fully
   masked dependent modality still learns through its own term.
3. After the optimizer step, the flags for the next step: softmax over the concatenation
   [z_1, …, z_M] (M·K entries per sample, unmasked logits, no gradient),
   share_m = batch mean of block m's mass, dep_m = share_m > σ; then ℓ ← ℓ + e·ramp.
The ramp ℓ and the flags restart at 0 / False at the start of every active epoch, so p = 0 on
an epoch's first step and throughout epoch 0. Outside the window the step is the plain one,
CE(L*(Σ_m z_m), y); evaluation is always unmasked: L*(Σ_m z_m) fused, z_m per modality.

L* is affine, so L*(Σ_m z_m) = L*(b_split) + Σ_m A·(W_m h_m) with A = L*.weight: the head
keeps exact per-modality contributions and Shapley's one-pass path stays exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bbench.config.fields import SpecError, Uniform, param
from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, RunContext, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.encoders import build_encoder
from bbench.models.fusion import FusionHead, build_fusion
from bbench.models.multimodal import MultimodalModel

NAME = "AMCo"


@dataclass(frozen=True)
class AMCoParams(WindowParams):
    sigma: float = param(0.5, gt=0, search=Uniform(0.1, 0.9),
                         doc="dependence threshold on a modality's softmax share "
                             "(sigma >= 1 disables masking)")
    eps: float = param(0.3, gt=0, search=Uniform(0.1, 1.0),
                       doc="ramp level at which the mask probability reaches 1")
    ramp: float = param(0.1, ge=0, doc="ramp increment per step, times the epoch index")


class AMCoHead(FusionHead):
    """L* after an additive split head: forward = L*(Σ_m z_m), unimodal = z_m.

    Not additive itself (L* sits between Σ_m z_m and the output), but affine whenever the
    split head is: contributions A·c_m and bias L*(b_split), so logits = bias + Σ_m contrib_m.
    """

    def __init__(self, split: FusionHead) -> None:
        super().__init__(split.dims, split.num_classes)
        self.split = split
        self.lstar = nn.Linear(split.num_classes, split.num_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.lstar(self.split(features))

    def unimodal(self, features: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        return self.split.unimodal(features, index)

    def affine_contributions(
        self, features: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        parts = self.split.affine_contributions(features)
        if parts is None:
            return None
        contrib, bias = parts
        return contrib @ self.lstar.weight.t(), self.lstar(bias)

    def unimodal_affine(self, state, index):
        return self.split.unimodal_affine(
            {k.removeprefix("split."): v for k, v in state.items() if k.startswith("split.")},
            index)


def mask_probability(level: float, eps: float) -> float:
    """p = sin(π/2 · min(ε, ℓ)/ε): 0 at ℓ = 0, rising to exactly 1 once ℓ ≥ ε."""
    return math.sin(math.pi / 2 * min(eps, level) / eps)


def class_mask(p: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """μ as a bool K-vector (True = kept) with exactly ⌊pK⌋ False entries, at uniformly
    random positions: the positions whose rank in a random permutation is below n."""
    return torch.randperm(num_classes, generator=generator) >= math.floor(p * num_classes)


def dependence_shares(logits: torch.Tensor) -> torch.Tensor:
    """share_m [M] from unimodal logits [M, B, K]: softmax over each sample's M·K
    concatenated logits, block m's mass, averaged over the batch (float32, no gradient)."""
    M, B, K = logits.shape
    with torch.no_grad():
        flat = logits.detach().float().permute(1, 0, 2).reshape(B, M * K)
        return flat.softmax(1).view(B, M, K).sum(2).mean(0)


@register_method()
class AMCo(Method):
    name = NAME
    family = Family.FEED_FORWARD
    min_modalities = 2  # masks the modality the fusion depends on, against the others
    Params = AMCoParams
    windowed = True
    # One forward and one backward per step (methods.md §2: the M + 1 loss terms share one
    # graph); L*'s cost lies inside them, it is no extra pass.
    extra_passes = False

    def __init__(self, params: AMCoParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self.level = 0.0
        self.dependent = torch.zeros(len(self.modalities), dtype=torch.bool, device=ctx.device)

    def build_model(self) -> nn.Module:
        """The run's encoders and fusion head, wrapped with L*. The split needs Σ_m z_m = z,
        so only an additive head (concat, the default, or sum, shared, ...) is accepted."""
        info, spec = self.ctx.info, self.ctx.model_spec
        encoders = {m: build_encoder(spec.encoder_for(m), info.input_shapes[m], m)
                    for m in self.modalities}
        split = build_fusion(spec.fusion, [encoders[m].out_dim for m in self.modalities],
                             info.num_classes, spec.fusion_options)
        if not split.additive:
            raise SpecError(f"{NAME}: fusion {spec.fusion!r} is not additive, so it has no split "
                            f"head with Σ_m z_m = z; {NAME} needs an additive fusion such as "
                            f"concat")
        return MultimodalModel(self.modalities, encoders, AMCoHead(split))

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        """Every active epoch starts unmasked: ramp ℓ = 0, no modality dependent."""
        if self.active(epoch):
            self.level = 0.0
            self.dependent = torch.zeros_like(self.dependent)

    def forward(self, model: MultimodalModel, batch: Batch, step: StepInfo) -> ForwardOut:
        """out = L*(Σ_m z̃_m) with this step's mask μ on the flagged modalities. The z_m come
        from the loss accessor once and serve the fused term, the unimodal CEs (unmasked) and
        the shares (detached), so the M + 1 loss terms need a single backward."""
        features = model.encode(batch)
        logits = torch.stack([model.unimodal_logits(features, i)
                              for i in range(len(self.modalities))])  # loss accessor, [M, B, K]
        p = mask_probability(self.level, self.params.eps)
        kept = class_mask(p, logits.shape[2], self.generator).to(logits.device)
        factor = (kept[None, :] | ~self.dependent[:, None]).to(logits.dtype)  # [M, K]
        fused = model.head.lstar((logits * factor[:, None, :]).sum(0))
        self.log.add("mask_p", p)
        for i, m in enumerate(self.modalities):
            self.log.add(f"dependent_{m}", self.dependent[i])
        return ForwardOut(model, features, fused,
                          extras={"unimodal": logits, "class_mask": kept, "mask_p": p,
                                  "shares": dependence_shares(logits)})

    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        """CE(out, y) + Σ_m CE(z_m, y), the unimodal terms on the unmasked logits."""
        labels = batch["label"]
        unimodal = out.extras["unimodal"]
        return F.cross_entropy(out.logits, labels) + sum(
            F.cross_entropy(unimodal[i], labels) for i in range(unimodal.shape[0]))

    def after_step(self, out: ForwardOut, batch: Batch, step: StepInfo) -> None:
        """Flags for the next step from this step's unmasked shares, then ℓ ← ℓ + e·ramp."""
        shares = out.extras["shares"]
        self.dependent = shares > self.params.sigma
        self.level += step.epoch * self.params.ramp
        for i, m in enumerate(self.modalities):
            self.log.add(f"share_{m}", shares[i])

    def extra_state(self) -> dict[str, Any]:
        return {"level": self.level, "dependent": self.dependent.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.level = float(state["level"])
        self.dependent = state["dependent"].to(device=self.dependent.device, dtype=torch.bool)
