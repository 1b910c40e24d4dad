"""Greedy (methods.md §5.4): balanced MMTM with conditional learning speed (Wu, Jastrzębski,
Cho, Geras, ICML 2022).

Why: a multimodal network learns greedily, leaning on whichever modality it fits fastest.
With MMTM blocks between the encoder stages (bbench/models/mmtm.py) each modality's
features are partly produced by a cross-modal path (the blocks' squeeze and its own
excitation) and partly by its own encoder. How fast each path learns is measured from the
gradients, and a modality that relies on the cross-modal path much more than the others
is cut off from it for a few steps, so that its own encoder has to learn.

Learning-speed bookkeeping (`observe_grads`, read-only, at every step with e <= end that is
not curated, before `start` too): for each modality m,
S_bypass,m += Σ‖∇θ‖² / Σ‖θ‖² over the excitation parameters of m and the shared squeeze
parameters of every block, S_main,m += the same over enc(m); BDR_m = log10(S_bypass,m /
S_main,m) and d_m = BDR_m − mean_{k≠m} BDR_k (for M = 2, d_0 = BDR_0 − BDR_1 = −d_1).
Inside the window, max_m |d_m| > ε starts curation with the caring modality
c = argmax_m d_m (lowest index on ties) for the next `window_size` steps: in every block
F_c ← F_c ⊙ ḡ_c, the block's running mean of c's gate, detached, so c's features get no
cross-modal input and W_c^ex no gradient. Curated steps do no bookkeeping; curation also
ends with the window. The loss is always CE(z, y), and evaluation uses the live gates.

State: the running mean gates live in the model's buffers (checkpointed with it); the sums
and the curation state are the method's `extra_state`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable

import torch
from torch import nn

from bbench.config.fields import LogUniform, param
from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, RunContext, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.registry import register_method
from bbench.models.mmtm import MMTMModel
from bbench.models.multimodal import build_multimodal_model


@dataclass(frozen=True)
class GreedyParams(WindowParams):
    alpha: float = param(0.001, ge=0, search=LogUniform(1e-4, 1e-2),
                         doc="ε: curation starts when max_m |d_m| > alpha")
    window_size: int = param(5, ge=1, doc="curated steps after each trigger")
    ratio: int = param(4, ge=1, doc="MMTM reduction: ⌊2 Σ_m C_m / ratio⌋ squeeze units")


def relative_speed(params: Iterable[nn.Parameter], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ‖∇θ‖², Σ‖θ‖²) over the trainable `params`, in float64 on `device`; a parameter
    without a gradient adds 0 to the first sum (frozen ones are not learning at all). An
    empty list's norm is a CPU zero, hence the explicit device."""
    params = [p for p in params if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]
    squared = [torch.nn.utils.get_total_norm(t).double().square().to(device)
               for t in (grads, [p.detach() for p in params])]
    return squared[0], squared[1]


def balance_gaps(bdr: torch.Tensor) -> torch.Tensor:
    """d_m = BDR_m − mean_{k≠m} BDR_k, as one matrix product so that for M = 2 the mean of
    the others is the other BDR exactly (d_0 = −d_1 bit for bit)."""
    M = bdr.shape[0]
    others = (1 - torch.eye(M, dtype=bdr.dtype, device=bdr.device)) / (M - 1)
    return bdr - others @ bdr


def caring_choice(gaps: torch.Tensor, alpha: float) -> torch.Tensor:
    """The caring modality argmax_m d_m if max_m |d_m| > ε, else −1 (a 0-d tensor).

    Ties start nothing (equal d's are all 0 for M = 2, and |0| > ε never holds); among equal
    maxima the lowest index is taken (`argmax` returns the first).
    """
    best = gaps.argmax()
    return torch.where(gaps.abs().max() > alpha, best, torch.full_like(best, -1))


@register_method()
class Greedy(Method):
    name = "Greedy"
    family = Family.FEED_FORWARD
    min_modalities = 2  # balances modalities against each other
    Params = GreedyParams
    windowed = True

    def __init__(self, params: GreedyParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        M = len(self.modalities)
        self.s_bypass = torch.zeros(M, dtype=torch.float64)
        self.s_main = torch.zeros(M, dtype=torch.float64)
        self.caring = 0  # c, meaningful while remaining > 0
        self.remaining = 0  # curated steps left

    def build_model(self) -> nn.Module:
        """The run's encoders and head (initialised as Baseline's are), with MMTM blocks."""
        base = build_multimodal_model(self.ctx.info, self.ctx.model_spec)
        info = self.ctx.info
        return MMTMModel(base.modalities, base.encoders, base.head, info.input_shapes,
                         info.input_dtypes, self.params.ratio)

    def step_branch(self, step: StepInfo) -> Hashable:
        """A curated step detaches the caring modality's excitation input: other FLOPs."""
        return self.caring if self.remaining > 0 else None

    def forward(self, model: MMTMModel, batch: Batch, step: StepInfo) -> ForwardOut:
        """Live gates, except the caring modality's while curation lasts."""
        caring = self.caring if self.remaining > 0 else None
        features, gates = model.encode_gated(batch, caring=caring)
        for i, m in enumerate(self.modalities):
            self.log.add(f"gate_{m}", gates[i])
        keep = batch.get("keep")
        return ForwardOut(model, features, model.fuse(features, keep), keep)

    def observe_grads(self, out: ForwardOut, batch: Batch, step: StepInfo) -> None:
        """Count a curated step, or update the sums and decide whether curation starts."""
        curated = step.active and self.remaining > 0
        self.log.add("curation_rate", float(curated))
        if curated:
            for i, m in enumerate(self.modalities):
                self.log.add(f"caring_{m}", float(i == self.caring))
            self.remaining -= 1
            return
        if step.epoch > self.params.end:
            self.remaining = 0
            return
        bdr = self._update_sums(out.model)
        gaps = balance_gaps(bdr)
        for i, m in enumerate(self.modalities):
            self.log.add(f"bdr_{m}", bdr[i])
            self.log.add(f"d_{m}", gaps[i])
        if step.active:
            pick = int(caring_choice(gaps, self.params.alpha))  # the step's one host sync
            if pick >= 0:
                self.caring, self.remaining = pick, self.params.window_size

    def _update_sums(self, model: MMTMModel) -> torch.Tensor:
        """S_bypass += relative squared gradient of (W_m^ex, b_m^ex, W_sq, b_sq), S_main += that
        of enc(m), for every m; returns BDR [M]."""
        device = next(model.parameters()).device
        squeeze_grad, squeeze_weight = relative_speed(model.squeeze_parameters(), device)
        bypass, main = [], []
        for i, m in enumerate(self.modalities):
            grad, weight = relative_speed(model.excitation_parameters(i), device)
            bypass.append((squeeze_grad + grad) / (squeeze_weight + weight).clamp_min(1e-12))
            grad, weight = relative_speed(model.encoders[m].parameters(), device)
            main.append(grad / weight.clamp_min(1e-12))
        self.s_bypass = self.s_bypass.to(device) + torch.stack(bypass)
        self.s_main = self.s_main.to(device) + torch.stack(main)
        return torch.log10(self.s_bypass.clamp_min(1e-12)) - torch.log10(self.s_main.clamp_min(1e-12))

    def extra_state(self) -> dict[str, Any]:
        return {"s_bypass": self.s_bypass.detach().cpu().clone(),
                "s_main": self.s_main.detach().cpu().clone(),
                "caring": self.caring, "remaining": self.remaining}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.s_bypass = state["s_bypass"].clone()
        self.s_main = state["s_main"].clone()
        self.caring = int(state["caring"])
        self.remaining = int(state["remaining"])
