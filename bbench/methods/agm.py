"""AGM (methods.md §7.2): push each modality's Shapley contribution towards its running
average by scaling its encoder weight gradients.

Every step with e <= end (inside the window *and* before `start`): the eval-mode, no-grad
fused logits f(S) of every modality subset (`subset_logits`: one encoder pass plus
c_m = E_m(0) when the model allows it, else 2^M masked passes), with f(∅) := 0; Shapley
logits φ_m; scores s_m = mean_i min(−log_softmax(φ_m,i)[y_i], 18.4207); ratios
r_m = exp(M/(M−1)(s̄ − s_m)) and r̂_m the same from the running means T_m *before* this
step's update; k_m = exp(α·min(r̂_m − r_m, cap)); then T ← running mean of the scores.
In active epochs one `grad_scale_` call scales EW(m) by k_m, and the global gradient
norm is clipped to `clip` when an element of the head's weight gradient leaves
[−clip, clip]. Outside the window the step is Baseline's; T keeps updating while e <= end.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from bbench import ops
from bbench.config.fields import LogUniform, param
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams, encoder_weight_tensors
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.metrics.shapley import EvalPath, shapley_weights, subset_logits, subset_members

# The original's −log max(softmax, 1e-8) = min(−log softmax, −log 1e-8), with the bound
# written as methods.md §7.2 gives it.
SCORE_CAP = 18.4207


@dataclass(frozen=True)
class AGMParams(WindowParams):
    alpha: float = param(0.1, ge=0, search=LogUniform(0.01, 1.0))
    cap: float = param(7.0, gt=0, doc="upper bound of r̂ − r inside the exponent")
    clip: float = param(5.0, ge=0, doc="head-gradient threshold and global max norm; 0 disables")
    start: int = param(0, ge=0)
    end: int = param(80, ge=0)


@functools.lru_cache(maxsize=64)
def shapley_operator(num_modalities: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """C [M, 2^M] with φ_m = Σ_S C[m, S] f(S).

    From φ_m = Σ_{S ∌ m} w(|S|)[f(S ∪ {m}) − f(S)]: the coefficient of f(S) is +w(|S| − 1)
    when m ∈ S and −w(|S|) when m ∉ S. Every subset keeps its term, the singletons'
    f({m}) − f(∅) included. Cached per device, so a step copies nothing to the device.
    """
    M = num_modalities
    w = shapley_weights(M)
    rows = []
    for m in range(M):
        row = []
        for s in range(1 << M):
            members = subset_members(s, M)
            row.append(w[len(members) - 1] if m in members else -w[len(members)])
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=dtype)


def shapley_logits(logits: torch.Tensor) -> torch.Tensor:
    """φ [M, B, K] from the subset logits [2^M, B, K] (bit m of the subset = m present).

    f(∅) := 0 by definition: subset 0 (the all-absent prediction) is replaced by zeros, so
    Σ_m φ_m = f(𝓜) exactly. Half-precision logits are promoted to float32 (§1.4).
    """
    n = logits.shape[0]
    M = n.bit_length() - 1
    if n != 1 << M or M < 1:
        raise ValueError(f"AGM: need logits of 2^M modality subsets, got {n}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    values = torch.cat([torch.zeros_like(logits[:1]), logits[1:]])
    return torch.tensordot(shapley_operator(M, logits.device, logits.dtype), values, dims=1)


def agm_scores(phi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """s_m = mean_i min(−log_softmax(φ_m,i)[y_i], 18.4207) for φ [M, B, K]."""
    index = labels.view(1, -1, 1).expand(phi.shape[0], -1, 1)
    nll = -phi.log_softmax(-1).gather(-1, index).squeeze(-1)
    return nll.clamp(max=SCORE_CAP).mean(-1)


def agm_coefficients(scores: torch.Tensor, target: torch.Tensor, alpha: float, cap: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k, r, r̂): r = exp(M/(M−1)(s̄ − s)), r̂ the same from the running means T,
    k = exp(α·min(r̂ − r, cap)). A lower loss gives a larger ratio; r > r̂ gives k < 1."""
    M = scores.shape[-1]
    factor = M / (M - 1)
    ratio = torch.exp(factor * (scores.mean(-1, keepdim=True) - scores))
    ratio_hat = torch.exp(factor * (target.mean(-1, keepdim=True) - target))
    coeff = torch.exp(alpha * torch.clamp(ratio_hat - ratio, max=cap))
    return coeff, ratio, ratio_hat


def update_running_mean(target: torch.Tensor, count: int, scores: torch.Tensor
                        ) -> tuple[torch.Tensor, int]:
    """T ← T·(n−1)/n + s/n with n the 1-based count of updates: T is the mean of the scores."""
    count += 1
    return target * ((count - 1) / count) + scores / count, count


@register_method()
class AGM(Method):
    name = "AGM"
    family = Family.OPTIMIZATION
    min_modalities = 2  # balances modalities against each other
    extra_passes = True  # the per-step eval-mode subset evaluations
    Params = AGMParams
    windowed = True
    param_aliases = {"grad_norm_clip": "clip"}  # the authors' release
    # How the subset logits are formed: None lets `choose_path` pick the one-pass path where
    # the model allows it; "masked-passes" forces one masked evaluation per subset.
    logits_path: EvalPath | None = None

    def __init__(self, params: Any, ctx) -> None:
        super().__init__(params, ctx)
        self.target = torch.zeros(len(self.modalities))  # T_m, moved to the step's device
        self.count = 0  # n: updates of T so far
        self._coeff: torch.Tensor | None = None
        self._groups: dict[tuple, torch.Tensor] = {}

    def observe_grads(self, out: ForwardOut, batch, step: StepInfo) -> None:
        """Every step with e <= end: scores, ratios and k from T before the update, then T."""
        if step.epoch > self.params.end:
            return
        logits = subset_logits(self, out.model, batch, path=self.logits_path)
        scores = agm_scores(shapley_logits(logits), batch["label"])
        target = self.target.to(device=scores.device, dtype=scores.dtype)
        coeff, ratio, ratio_hat = agm_coefficients(scores, target, self.params.alpha,
                                                   self.params.cap)
        self.target, self.count = update_running_mean(target, self.count, scores)
        self._coeff = coeff
        for i, m in enumerate(self.modalities):
            self.log.add(f"score_{m}", scores[i])
            self.log.add(f"ratio_{m}", ratio[i])
            self.log.add(f"ratio_hat_{m}", ratio_hat[i])

    def edit_grads(self, out: ForwardOut, batch, step: StepInfo) -> None:
        coeff, self._coeff = self._coeff, None  # this step's k (active implies e <= end)
        if coeff is None:
            raise RuntimeError("AGM: edit_grads ran without this step's coefficients")
        tensors = [(i, p.grad) for i, p in encoder_weight_tensors(out.model) if p.grad is not None]
        group = self._group(tuple(i for i, _ in tensors), coeff.device)
        ops.grad_scale_([g for _, g in tensors], group, coeff)
        clipped = self._clip(out.model)
        for i, m in enumerate(self.modalities):
            self.log.add(f"coef_{m}", coeff[i])
        self.log.add("clipped", clipped)

    def _clip(self, model: torch.nn.Module) -> torch.Tensor | bool:
        """If any head weight-gradient element is > clip or < −clip, clip the global norm of
        every gradient to `clip` (`clip_grad_norm_`'s arithmetic, without a host sync)."""
        clip = self.params.clip
        head = [p.grad for p in model.head.parameters() if p.ndim >= 2 and p.grad is not None]
        if clip == 0 or not head:
            return False
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        exceeds = torch.stack([g.abs().amax() for g in head]).amax() > clip
        total = torch.nn.utils.get_total_norm(grads)
        scale = torch.where(exceeds, torch.clamp(clip / (total + 1e-6), max=1.0),
                            torch.ones_like(total))
        torch._foreach_mul_(grads, scale)
        return exceeds

    def _group(self, indices: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The modality index of every scaled tensor, made on the device once per layout."""
        key = (indices, device)
        if key not in self._groups:
            self._groups[key] = torch.tensor(indices, dtype=torch.long, device=device)
        return self._groups[key]

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        for i, m in enumerate(self.modalities):
            self.log.set(f"target_{m}", self.target[i])

    def extra_state(self) -> dict[str, Any]:
        return {"target": self.target.detach().cpu().clone(), "count": self.count}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.target = state["target"].clone()
        self.count = int(state["count"])
