"""OGM / OGM-GE (methods.md §7.1): slow the dominant encoders by scaling their gradients.

Per active step: scores s_m from the scoring accessor, ρ_m = s_m / min_k s_k,
k_m = 1 − tanh(α·ρ_m) where ρ_m > 1 (else 1), then one `grad_scale_` call scales every
encoder weight tensor EW(m) by k_m and, for OGM-GE, adds N(0, std(g)²) noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bbench import ops
from bbench.config.fields import LogUniform, param
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams, encoder_weight_tensors
from bbench.methods.facts import Family
from bbench.methods.registry import register_method


@dataclass(frozen=True)
class OGMParams(WindowParams):
    alpha: float = param(0.3, ge=0, search=LogUniform(0.05, 2.0))
    variant: Literal["OGM", "OGM_GE"] = "OGM_GE"
    start: int = param(10, ge=0)
    end: int = param(80, ge=0)


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, ρ): ρ_m = s_m / min s (denominator ≥ 1e-12); k_m = 1 − tanh(α ρ_m) iff ρ_m > 1."""
    ratio = scores / scores.min().clamp_min(1e-12)
    coeff = torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))
    return coeff, ratio


@register_method()
class OGM(Method):
    name = "OGM"
    family = Family.OPTIMIZATION
    min_modalities = 2  # balances modalities against each other
    Params = OGMParams
    windowed = True
    param_aliases = {"method": "variant"}

    def edit_grads(self, out: ForwardOut, batch, step: StepInfo) -> None:
        scores = self.scores(out.model, out.features, batch["label"])
        coeff, ratio = ogm_coefficients(scores, self.params.alpha)
        tensors = [(i, p.grad) for i, p in encoder_weight_tensors(out.model) if p.grad is not None]
        grads = [g for _, g in tensors]
        group = torch.tensor([i for i, _ in tensors], dtype=torch.long, device=coeff.device)
        if self.params.variant == "OGM_GE":
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            ops.grad_scale_(grads, group, coeff, torch.ones_like(coeff), seed=seed)
        else:
            ops.grad_scale_(grads, group, coeff)
        batch_size = batch["label"].shape[0]
        for i, m in enumerate(self.modalities):
            self.log.add(f"coef_{m}", coeff[i])
            self.log.add(f"ratio_{m}", ratio[i])
            self.log.add(f"modulated_{m}", coeff[i] < 1)
            self.log.add(f"score_{m}", scores[i] / batch_size)

