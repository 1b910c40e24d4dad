"""OPM (methods.md §5.1): drop the dominant modalities' features at random during training.

ρ_m = s_m / min_k s_k; τ_m = tanh(relu(ρ_m − 1)); drop probability
q_m = clip(q_base (1 + λ τ_m), 0, 1) where τ_m > 0, else 0. With probability p_exe per
batch, each sample keeps modality m with probability 1 − q_m; kept features are rescaled
by 1/(1 − θ), θ = Σ_m d_m q_m / Σ_m d_m; samples with every modality dropped leave the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bbench.config.fields import LogUniform, Uniform, param
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.registry import register_method


@dataclass(frozen=True)
class OPMParams(WindowParams):
    q_base: float = param(0.4, ge=0, le=1, search=Uniform(0.1, 0.9))
    alpha: float = param(0.5, ge=0, search=LogUniform(0.05, 2.0))
    p_exe: float = param(0.7, ge=0, le=1)


def drop_probabilities(scores: torch.Tensor, q_base: float, alpha: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, ρ); the weakest modality, and every modality at a tie, gets q = 0."""
    ratio = scores / scores.min().clamp_min(1e-12)
    tau = torch.tanh(torch.relu(ratio - 1))
    q = torch.where(tau > 0, (q_base * (1 + alpha * tau)).clamp(0, 1), torch.zeros_like(tau))
    return q, ratio


@register_method()
class OPM(Method):
    name = "OPM"
    family = Family.FEED_FORWARD
    min_modalities = 2  # balances modalities against each other
    Params = OPMParams
    windowed = True

    def forward(self, model, batch, step: StepInfo) -> ForwardOut:
        features = model.encode(batch)
        labels = batch["label"]
        q, ratio = drop_probabilities(self.scores(model, features, labels),
                                      self.params.q_base, self.params.alpha)
        execute = bool(torch.rand((), generator=self.generator) < self.params.p_exe)
        self.log.add("exec_rate", float(execute))
        for i, m in enumerate(self.modalities):
            self.log.add(f"q_{m}", q[i])
            self.log.add(f"ratio_{m}", ratio[i])
        if not execute:
            for m in self.modalities:
                self.log.add(f"dropped_{m}", 0.0)
            return ForwardOut(model, features, model.head(features))
        draws = torch.rand(labels.shape[0], len(self.modalities), generator=self.generator)
        keep = draws.to(q.device) < (1 - q)[None, :]
        dims = torch.tensor([f.shape[1] for f in features], dtype=q.dtype, device=q.device)
        theta = (dims * q).sum() / dims.sum()
        scale = (1 / (1 - theta)).to(features[0].dtype)
        dropped = [f * keep[:, i, None].to(f.dtype) * scale for i, f in enumerate(features)]
        for i, m in enumerate(self.modalities):
            self.log.add(f"dropped_{m}", (~keep[:, i]).double().mean())
        return ForwardOut(model, features, model.head(dropped),
                          extras={"alive": keep.any(1), "keep": keep, "scale": scale})

    def loss(self, out: ForwardOut, batch, step: StepInfo) -> torch.Tensor:
        """CE over the samples that kept at least one modality (plain CE when every sample did)."""
        alive = out.extras.get("alive")
        if alive is None:
            return F.cross_entropy(out.logits, batch["label"])
        labels = batch["label"]
        per_sample = F.cross_entropy(out.logits, labels, reduction="none")
        kept_mean = (per_sample * alive).sum() / alive.sum().clamp_min(1)
        # Where every sample kept a modality the kept mean *is* the plain mean; selecting the
        # plain `cross_entropy` then makes "nothing dropped" the Baseline loss by construction
        # (the two reductions round differently on some CPUs' vector paths). `where` picks it
        # without a host synchronisation, and the unselected branch gets an exact-zero gradient.
        return torch.where(alive.all(), F.cross_entropy(out.logits, labels), kept_mean)
