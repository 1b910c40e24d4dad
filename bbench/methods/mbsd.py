"""MBSD (methods.md §6.3): modality-balanced self-distillation between the modalities' own
predictions.

Per active step, with z_m from the loss accessor and p_m = softmax(z_m), every unordered
pair (a, b) of modalities gets, per sample i:
- w_i = sg(|p_a[y_i] − p_b[y_i]|)·right_i, right_i = ⟦argmax p_a = y_i⟧ ∨ ⟦argmax p_b = y_i⟧;
- L_RS^{ab} = (1/B)·Σ_i w_i·(1/K)·‖z_{a,i} − z_{b,i}‖², on logits;
- L_KL^{ab} = (1/B)·Σ_i w_i·KL(sg(p_st) ‖ p_wk), the strong member st being the one with the
  larger p[y_i] (a on ties), the weak one wk the other.
L = CE(z, y) + Σ_m CE(z_m, y) + mean over the M(M−1)/2 pairs of (L_RS + L_KL).

Why: the unimodal CE terms train every modality's own head on its own; the pair terms then
pull the weaker modality's prediction towards the stronger one's on the samples where at
least one of the two is right, the more the further apart their true-class confidences are.
The teacher side and the weights are constants, so the knowledge flows from strong to weak
only and the weights cannot be gamed by the gradient. Outside the window: CE(z, y).

The KL is between the two whole distributions, from `log_softmax` on both sides; it is not
the public implementations' KL routine fed the two true-class probabilities (a non-positive
scalar, not a divergence), and logits are used for L_RS for every M (BalanceMM switches to
probabilities for three modalities).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.registry import register_method


@dataclass
class PairTerms:
    """Per pair (in `torch.triu_indices` order: (0, 1), (0, 2), …) and per sample, [P, B] each:
    the weight w (no gradient) and the unweighted terms (1/K)·‖z_a − z_b‖² and KL(sg(p_st) ‖ p_wk)."""

    weight: torch.Tensor
    rs: torch.Tensor
    kl: torch.Tensor

    def pair_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_RS, L_KL) per pair, [P] each: the batch means of the weighted terms."""
        return (self.weight * self.rs).mean(1), (self.weight * self.kl).mean(1)


def pair_terms(unimodal: Sequence[torch.Tensor], labels: torch.Tensor) -> PairTerms:
    """The distillation terms of every unordered pair of modalities, vectorised over pairs and
    samples; computed in float32 or wider (mixed precision keeps its statistics in float32)."""
    dtype = torch.promote_types(unimodal[0].dtype, torch.float32)
    logits = torch.stack(list(unimodal)).to(dtype)  # [M, B, K]
    first, second = torch.triu_indices(len(unimodal), len(unimodal), 1, device=logits.device)
    log_p = logits.log_softmax(-1)
    log_a, log_b = log_p[first], log_p[second]  # [P, B, K]
    y = labels[None, :, None].expand(first.numel(), -1, 1)
    with torch.no_grad():
        true_a, true_b = log_a.gather(-1, y).exp(), log_b.gather(-1, y).exp()  # [P, B, 1]
        right = (log_a.argmax(-1) == labels) | (log_b.argmax(-1) == labels)
        weight = (true_a - true_b).squeeze(-1).abs() * right
        a_strong = true_a >= true_b
    teacher = torch.where(a_strong, log_a, log_b).detach()
    student = torch.where(a_strong, log_b, log_a)
    kl = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)
    rs = (logits[first] - logits[second]).pow(2).mean(-1)
    return PairTerms(weight, rs, kl)


@register_method()
class MBSD(Method):
    name = "MBSD"
    family = Family.OBJECTIVE
    min_modalities = 2  # distils between modalities
    Params = WindowParams  # only the window (BalanceMM 0..80)
    windowed = True

    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        labels = batch["label"]
        unimodal = [out.unimodal(i) for i in range(len(self.modalities))]
        terms = pair_terms(unimodal, labels)
        loss_rs, loss_kl = terms.pair_losses()
        self.log.add("w_mean", terms.weight.mean())
        self.log.add("w_active", (terms.weight > 0).double().mean())
        self.log.add("loss_rs", loss_rs.mean())
        self.log.add("loss_kl", loss_kl.mean())
        supervised = F.cross_entropy(out.logits, labels) + sum(
            F.cross_entropy(z, labels) for z in unimodal)
        return supervised + (loss_rs + loss_kl).mean().to(supervised.dtype)
