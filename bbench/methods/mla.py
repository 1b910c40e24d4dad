"""MLA (methods.md §5.3): alternating unimodal adaptation through one shared head.

Joint training lets the modality that learns fastest dominate the fused objective, so the
others stay under-trained (modality laziness). MLA never forms a fused loss in training:
each batch makes M sub-steps, one per modality in modality order, and sub-step m trains
only E_m and the shared head H = Linear(d_max → K) on u_m = H(pad(h_m)) (features
zero-padded at the end to d_max = max_m d_m): L_m = CE(u_m, y), one optimizer update.
Only E_m runs in sub-step m, so the other encoders' parameters and buffers stay bit for
bit as they were, and every modality gets its own full update of H.

Alternating through one head would make H forget what earlier modalities taught it, so
the head-weight gradient is projected away from the directions the features seen so far
occupy (orthogonal weight modification, a recursive-least-squares projector): with
r = batch mean of sg(pad(h_m)) (1 × d_max), k = P rᵀ and α_j = 0.1^{1 + j/n_b} (batch j of
n_b in the epoch),

    P ← P − k kᵀ / (α_j + r k),   P ← P / ‖P‖_F,   G ← G Pᵀ,

where r k is a scalar (so P stays symmetric positive semi-definite) and G Pᵀ *replaces*
H.weight's gradient (the head bias and the encoders are not projected). P starts as the
identity, is shared by all modalities and persists over the whole run (it is checkpointed
with the sub-step counter n); the very first sub-step of the run (n = 0) uses the
unprojected gradient.

Evaluation fuses per sample by confidence: e_m is the entropy of softmax(u_m) (from
log_softmax) and λ_m = softmax over modalities of −e_m, i.e.
exp(max_k e_k − e_m) / Σ_j exp(max_k e_k − e_j); the output is Σ_m λ_m u_m. Because the
method overrides `eval_logits`, Shapley evaluates by input-masked passes. The mean gate of
each modality over the validation split is logged: the Trainer's validation pass is the
only evaluation between an epoch's `on_epoch_start` and its `on_epoch_end`, so gates are
accumulated exactly then, from that pass's own forward (no second validation pass).

Outside the window the step is the plain step on this model: CE(Σ_m u_m, y), every
encoder, no projection (the projector and its counter do not move). The run's fusion
setting does not apply: the shared head is part of the method.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bbench.data.base import Batch
from bbench.methods.base import (ForwardOut, Method, RunContext, StepInfo, StepOutput,
                                 WindowParams)
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.multimodal import MultimodalModel, build_multimodal_model


def projector_alpha(batch_index: int, num_batches: int) -> float:
    """α_j = 0.1^{1 + j/n_b}: the regulariser of the projector update shrinks over an epoch
    (0.1 at its first batch), so later batches protect the directions they see more sharply."""
    return 0.1 ** (1 + batch_index / num_batches)


def update_projector(projector: torch.Tensor, r: torch.Tensor, alpha: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_new / ‖P_new‖_F, ‖P_new rᵀ‖ / ‖P rᵀ‖) for P_new = P − k kᵀ / (α + r k), k = P rᵀ.

    `r` is a 1 × d row (float32). The denominator r k is the scalar r P rᵀ, not the outer
    product k r: with a symmetric P the update is then exactly symmetric, stays positive
    semi-definite for α > 0, and shrinks P along rᵀ by α / (α + r k) (the ratio returned,
    measured before the normalisation). Denominators are clamped at 1e-12 (§1.6).
    """
    k = projector @ r.t()
    updated = projector - (k @ k.t()) / (alpha + r @ k).clamp_min(1e-12)
    shrink = (torch.linalg.vector_norm(updated @ r.t())
              / torch.linalg.vector_norm(k).clamp_min(1e-12))
    return updated / torch.linalg.matrix_norm(updated).clamp_min(1e-12), shrink


def entropy_gates(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """λ [M, B]: per sample, the softmax over modalities of −e_m, e_m the entropy of
    softmax(u_m) over classes (from log_softmax, in float32 or wider).

    softmax(−e) over the modality axis equals exp(max_k e_k − e_m) / Σ_j exp(max_k e_k − e_j):
    the weights are positive, sum to one per sample and favour the most confident modality.
    """
    stacked = torch.stack(list(logits))
    log_p = stacked.to(torch.promote_types(stacked.dtype, torch.float32)).log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return (-entropy).softmax(0)


def gated_fusion(logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_m λ_m u_m [B, K], λ [M, B]) with the entropy gates of `entropy_gates`."""
    gates = entropy_gates(logits)
    stacked = torch.stack(list(logits))
    return (gates.to(stacked.dtype).unsqueeze(-1) * stacked).sum(0), gates


@register_method()
class MLA(Method):
    name = "MLA"
    family = Family.FEED_FORWARD
    Params = WindowParams  # only the window (BalanceMM 0..80; the original has none)
    windowed = True
    min_modalities = 2  # alternates and gates modalities against each other
    # Not extra encoder passes (Σ_m F_m is one F and the M partial backwards are one Bw) but
    # the projector's matrix products in every sub-step after the run's first, and a head
    # call per modality on d_max ≥ d_m columns: an active run's training FLOPs always exceed
    # Baseline's on the same budget (measured in tests/unit/test_mla.py).
    extra_passes = True

    # The projector P (d_max × d_max, float32, on the model device) and the sub-step counter
    # n: method state, built in `on_fit_start` and checkpointed (§1.12).
    projector: torch.Tensor
    substeps: int

    def __init__(self, params: WindowParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        # Σ_i λ_{m,i} and the sample count of the current epoch's validation pass; None
        # outside the bracket on_epoch_start .. on_epoch_end (test, Shapley, FLOP probes).
        self._gate_sums: torch.Tensor | None = None
        self._gate_samples = 0

    def build_model(self) -> nn.Module:
        """The run's encoders and the shared head H = Linear(d_max → K) on padded features."""
        return build_multimodal_model(self.ctx.info, self.ctx.model_spec, fusion="shared")

    def on_fit_start(self, loop: TrainingLoop) -> None:
        """P = I of the head's width d_max (read from the model, never assumed), n = 0; a
        resumed run then loads the learnt P and n over them."""
        self.projector = torch.eye(loop.model.head.d_max, dtype=torch.float32, device=loop.device)
        self.substeps = 0

    # -- steps ------------------------------------------------------------------------------
    def step_branch(self, step: StepInfo) -> Hashable:
        """The run's very first sub-step is the only one without the projection G Pᵀ."""
        return self.substeps == 0

    def train_step(self, loop: TrainingLoop, batch: Batch, step: StepInfo) -> StepOutput:
        """M sub-steps in modality order, each CE(u_m, y) into E_m and H, one update each."""
        if not step.active:
            return self.plain_step(loop, batch, step)
        model: MultimodalModel = loop.model
        weight = model.head.fc.weight
        alpha = projector_alpha(step.batch_index, step.num_batches)
        labels = batch["label"]
        features: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        for i, m in enumerate(self.modalities):
            loop.zero_grad()
            with loop.autocast():
                features.append(model.encoders[m](batch[m]))  # only E_m runs in sub-step m
                u = model.unimodal_logits(features, i)
                loss = F.cross_entropy(u, labels)
            loop.check_finite(loss, step)
            loop.backward(loss)
            features[i] = features[i].detach()
            if self.substeps > 0:
                r = model.head.pad(features[i]).float().mean(0, keepdim=True)
                self.projector, shrink = update_projector(self.projector, r, alpha)
                weight.grad.copy_((weight.grad.float() @ self.projector.t()).to(weight.grad.dtype))
                # r = 0 (all features dead) leaves P r = 0: a 0/0, not a shrink; not counted.
                self.log.add("proj_shrink", shrink, where=r.abs().sum() > 0)
            loop.optimizer_step()
            self.substeps += 1
            self.log.add(f"loss_{m}", loss.detach())
            logits.append(u.detach())
            losses.append(loss.detach())
        # For the loop's training accuracy: the gated fusion of the logits the sub-steps saw.
        # The step's loss is the mean sub-step CE, on the scale of the plain step's one CE.
        fused, _ = gated_fusion(logits)
        return StepOutput(torch.stack(losses).mean(), ForwardOut(model, features, fused))

    # -- evaluation (§1.11) -----------------------------------------------------------------
    def eval_logits(self, model: MultimodalModel, batch: Batch,
                    present: Sequence[bool] | None = None,
                    unimodal: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Σ_m λ_m u_m and u_m = H(pad(h_m)); absent modalities (present[m] False) get a zero
        raw input, and their u_m joins the gate like any other."""
        features = model.encode(batch, present)
        logits = [model.unimodal_logits(features, i) for i in range(len(model.modalities))]
        fused, gates = gated_fusion(logits)
        if self._gate_sums is not None and present is None:
            self._gate_sums += gates.sum(1).double()
            self._gate_samples += gates.shape[1]
        return fused, (logits if unimodal else [])

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> Dataset | None:
        """Opens the gate record: until `on_epoch_end` the only evaluation is the Trainer's
        validation pass of this epoch."""
        self._gate_sums = torch.zeros(len(self.modalities), dtype=torch.float64, device=loop.device)
        self._gate_samples = 0
        return None

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        """Logs gate_<m>, the mean λ_m over the validation samples, and closes the record."""
        if self._gate_sums is not None and self._gate_samples:
            means = self._gate_sums / self._gate_samples
            for i, m in enumerate(self.modalities):
                self.log.set(f"gate_{m}", means[i])
        self._gate_sums = None

    # -- state (§1.12) ----------------------------------------------------------------------
    def extra_state(self) -> dict[str, torch.Tensor | int]:
        return {"projector": self.projector.clone(), "substeps": self.substeps}

    def load_extra_state(self, state: dict[str, torch.Tensor | int]) -> None:
        self.projector.copy_(state["projector"])
        self.substeps = int(state["substeps"])
