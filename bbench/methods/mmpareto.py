"""MMPareto (methods.md §6.5): per encoder, combine the multimodal and unimodal gradients
along a direction that harms neither loss (Sener & Koltun's two-task min-norm point).

Each loss's gradient is computed separately with autograd.grad (M + 1 backward passes);
the head receives ∂(L_mm + Σ_m L_m), each encoder its Pareto-combined, rescaled gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bbench.config.fields import LogUniform, param
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method


@dataclass(frozen=True)
class MMParetoParams(WindowParams):
    gamma: float = param(1.5, gt=0, search=LogUniform(0.5, 4.0))


def pareto_weights(g_mm: torch.Tensor, g_m: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k0, k1, cos) for flat gradients: ½/½ without conflict, else the min-norm point.

    Computed with tensor ops only, so a step makes no host synchronisation.
    """
    A, Z, X = g_mm.dot(g_mm), g_m.dot(g_m), g_mm.dot(g_m)
    defined = (A > 0) & (Z > 0)
    cos = torch.where(defined, X / (A.sqrt() * Z.sqrt()), torch.zeros_like(X))
    min_norm = torch.where(X >= A, torch.full_like(X, 0.999),
                           torch.where(X >= Z, torch.full_like(X, 0.001),
                                       (Z - X) / (A + Z - 2 * X)))
    k0 = torch.where(cos > 0, torch.full_like(X, 0.5), min_norm)
    return k0, 1 - k0, cos


def combine_tensor(g_mm: torch.Tensor, g_m: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor,
                   gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(γ·u, rescaled): u = 2(k0 g_mm + k1 g_m), stretched to ‖g_mm + g_m‖ when that is longer."""
    u = 2 * (k0.to(g_mm.dtype) * g_mm + k1.to(g_mm.dtype) * g_m)
    u_norm = u.norm()
    t = (g_mm + g_m).norm()
    rescale = t > u_norm
    scale = torch.where(u_norm > 0, torch.where(rescale, t / u_norm,
                                                torch.ones_like(t)), torch.zeros_like(t))
    return gamma * scale * u, rescale & (u_norm > 0)


@register_method()
class MMPareto(Method):
    name = "MMPareto"
    family = Family.OBJECTIVE
    min_modalities = 2  # balances modalities against each other
    extra_passes = True  # M + 1 backward passes per step
    Params = MMParetoParams
    windowed = True
    param_aliases = {"alpha": "gamma"}

    def loss(self, out: ForwardOut, batch, step: StepInfo) -> torch.Tensor:
        out.extras["unimodal_losses"] = [F.cross_entropy(out.unimodal(i), batch["label"])
                                         for i in range(len(self.modalities))]
        return F.cross_entropy(out.logits, batch["label"])

    def backward(self, loop: TrainingLoop, loss: torch.Tensor, out: ForwardOut, batch,
                 step: StepInfo) -> None:
        model = out.model
        encoders = [[p for p in model.encoders[m].parameters() if p.requires_grad]
                    for m in self.modalities]
        enc_ids = {id(p) for group in encoders for p in group}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
        flat_enc = [p for group in encoders for p in group]
        g_mm = _grads(loop, loss, flat_enc + rest, retain=True)
        g_mm_enc, head_grads = g_mm[:len(flat_enc)], g_mm[len(flat_enc):]
        unimodal = out.extras["unimodal_losses"]
        offset = 0
        for i, (m, params) in enumerate(zip(self.modalities, encoders)):
            g_m = _grads(loop, unimodal[i], params + rest, retain=i < len(self.modalities) - 1)
            head_grads = [h + g for h, g in zip(head_grads, g_m[len(params):])]
            mine = g_mm_enc[offset:offset + len(params)]
            offset += len(params)
            self._combine(m, params, mine, g_m[:len(params)])
        for p, g in zip(rest, head_grads):
            p.grad = g

    def _combine(self, modality: str, params, g_mm: list[torch.Tensor], g_m: list[torch.Tensor]) -> None:
        flat_mm = torch.cat([g.reshape(-1).float() for g in g_mm])
        flat_m = torch.cat([g.reshape(-1).float() for g in g_m])
        k0, k1, cos = pareto_weights(flat_mm, flat_m)
        rescaled = torch.zeros((), device=flat_mm.device)
        for p, a, b in zip(params, g_mm, g_m):
            p.grad, was_rescaled = combine_tensor(a, b, k0, k1, self.params.gamma)
            rescaled = rescaled + was_rescaled
        self.log.add(f"cos_{modality}", cos)
        self.log.add(f"conflict_{modality}", cos <= 0)
        self.log.add(f"k0_{modality}", k0, where=cos <= 0)
        self.log.add(f"rescaled_{modality}", rescaled / max(len(params), 1))


def _grads(loop: TrainingLoop, loss: torch.Tensor, params: list[torch.Tensor],
           retain: bool) -> list[torch.Tensor]:
    """∂loss/∂p for every p (unscaled under fp16), zeros where the loss does not reach p."""
    grads = loop.grads(loss, params, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
