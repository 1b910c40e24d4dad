"""CML (methods.md §6.4): calibrating multimodal learning.

A well-calibrated multimodal classifier should not become *more* confident when it loses
information. Ma et al. (ICML 2023) observed that the dominant modality drives the fused
model's confidence, so that removing the others often leaves it as confident or more;
CML penalises every such rise, which curbs the over-confidence the dominant modality causes.

At the start of every active epoch a random permutation π of the modalities is drawn from
the method generator; it is the removal order for every step of that epoch (method state,
checkpointed). Per active step, z^(0) = z and, for j = 1..M−1,
z^(j) = z^(j−1) − W_{π_j} h_{π_j}: modality π_j's block is removed and the full bias kept
(for M = 2, z^(1) = W_k h_k + b with k the kept modality). With
conf^(j)_i = max_c softmax(z^(j)_i)_c, the calibration term of removal j is a hinge on the
batch sum, C_j = max(0, Σ_i conf^(j)_i − Σ_i conf^(j−1)_i), with gradients through both
confidences, and the loss is L = (1/M)·Σ_{j=0}^{M−1} CE(z^(j), y) + λ·Σ_j C_j. Outside the
window the step is Baseline's.

The removed block W_m h_m is read from the head's `affine_contributions` (the contribution
at h_m minus the contribution at h_m = 0, so a per-modality bias stays in), which is exact
for every late-fusion head with one additive logit term per modality: for concat it is
literally the column block W_m times h_m; for sum and shared heads it is the same as
zeroing h_m. A head that mixes modalities before its output (FiLM, gated) has no such
term, so the method refuses it when the model is built rather than inventing a different
removal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from bbench.config.fields import LogUniform, SpecError, param
from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, RunContext, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.fusion import FusionHead
from bbench.models.multimodal import MultimodalModel


@dataclass(frozen=True)
class CMLParams(WindowParams):
    lam: float = param(0.1, ge=0, search=LogUniform(0.01, 1.0),
                       doc="λ: weight of the calibration terms Σ_j C_j")


def partial_logits(head: FusionHead, features: Sequence[torch.Tensor], logits: torch.Tensor,
                   order: Sequence[int]) -> list[torch.Tensor]:
    """The chain z^(0) = logits, z^(j) = z^(j−1) − W_{π_j} h_{π_j} for j = 1..M−1.

    `head` has one additive term per modality (`affine_contributions`; `CML.build_model`
    refuses any other head). `order` is π as modality indices; its last entry is the modality
    never removed. The removed term is the head's contribution at h_m minus its
    contribution at h_m = 0, so every bias of the head stays in the partial logits. The
    graph stays live: the chain's CE and calibration terms reach the encoders and the head.
    """
    contrib, _ = head.affine_contributions(features)
    absent, _ = head.affine_contributions([torch.zeros_like(f[:1]) for f in features])
    removal = contrib - absent  # [M, B, K]: what h_m adds to the logits
    chain = [logits]
    for m in order[:-1]:
        chain.append(chain[-1] - removal[m])
    return chain


def confidence_sums(chain: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_i max_c softmax(z^(j)_i)_c for every link j of the chain ([M], float32, graph live)."""
    return torch.stack([z.float().softmax(1).amax(1).sum() for z in chain])


def calibration_terms(sums: torch.Tensor) -> torch.Tensor:
    """C_j = max(0, S_j − S_{j−1}) for j = 1..M−1, S the chain's batch-sum confidences.

    A hinge on the batch *sum*: per-sample rises that the batch as a whole does not show cost
    nothing. Gradients flow through both confidences of each difference.
    """
    return torch.relu(sums[1:] - sums[:-1])


@register_method()
class CML(Method):
    name = "CML"
    family = Family.OBJECTIVE
    min_modalities = 2  # a chain of removals needs a modality left at its end
    Params = CMLParams
    windowed = True

    def __init__(self, params: CMLParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self.order: tuple[int, ...] | None = None  # π of the current active epoch

    def build_model(self) -> MultimodalModel:
        model = super().build_model()
        if not type(model.head).has_contributions():
            raise SpecError(f"CML: fusion {self.ctx.model_spec.fusion!r} mixes the modalities "
                            f"inside the head; removing a modality's term W_m h_m needs a head "
                            f"with one additive term per modality (concat, sum, shared)")
        return model

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        """Draw this active epoch's removal order π from the method generator."""
        if self.active(epoch):
            self.order = tuple(torch.randperm(len(self.modalities),
                                              generator=self.generator).tolist())
        return None

    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        """(1/M)·Σ_j CE(z^(j), y) + λ·Σ_j C_j over this epoch's removal chain (one forward:
        the partial logits reuse the step's features)."""
        if self.order is None:
            raise RuntimeError("CML: no removal order at an active step; on_epoch_start draws "
                               "it before an active epoch's first step")
        labels = batch["label"]
        chain = partial_logits(out.model.head, out.features, out.logits, self.order)
        sums = confidence_sums(chain)
        terms = calibration_terms(sums)
        ce = torch.stack([F.cross_entropy(z, labels) for z in chain]).mean()
        penalty = terms.sum()
        removed = set(self.order[:-1])
        self.log.add("conf_loss", penalty)
        self.log.add("conf_violation_rate", penalty > 0)
        for i, m in enumerate(self.modalities):
            self.log.add(f"removed_{m}", float(i in removed))
        out.extras.update(partial_logits=chain, confidence_sums=sums, calibration_terms=terms,
                          order=self.order)
        return ce + (self.params.lam * penalty).to(ce.dtype)

    # -- state (§1.12) ---------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"order": None if self.order is None else list(self.order)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        order = state.get("order")
        self.order = None if order is None else tuple(int(i) for i in order)
