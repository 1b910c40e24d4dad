"""MMCosine (methods.md §6.1): scaled cosine logits per modality, so that no modality can
dominate the fused logits through the norm of its features or of its classifier weights.

The model is the run's encoders with the cosine head (`CosineHead`, fusion "cosine"):
z_m[c] = s·⟨h_m/‖h_m‖, w_{m,c}/‖w_{m,c}‖⟩ with w_{m,c} row c of W's block m, and
z = Σ_m z_m; no bias. Training is the plain step on that model: L = CE(z, y), one backward,
one optimizer step. Because the logits are a property of the model (evaluation uses them
too), the method is not windowed and refuses `start`/`end`.

Why it balances: with linear logits a modality whose features (or weights) grow takes a
larger share of z and of the gradient; here every z_m[c] lies in [−s, s] whatever the
norms, and the gradient with respect to h_m is orthogonal to h_m, so the loss cannot be
lowered by inflating a modality's norm, only by turning its direction.

The original's optional NCE term (weight 0 by default) is not implemented (§6.1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from bbench.config.fields import LogUniform, SpecError, param
from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, StepInfo
from bbench.methods.facts import Family
from bbench.methods.registry import register_method
from bbench.models.fusion import FUSIONS
from bbench.models.multimodal import MultimodalModel, build_multimodal_model

NAME = "MMCosine"


@dataclass(frozen=True)
class MMCosineParams:
    scale: float = param(15.0, gt=0, search=LogUniform(5.0, 30.0),
                         doc="s: every per-modality logit is s times a cosine "
                             "(BalanceMM 15, original 10)")


@register_method()
class MMCosine(Method):
    name = NAME
    family = Family.OBJECTIVE
    min_modalities = 2  # balances modalities against each other
    Params = MMCosineParams

    def build_model(self) -> nn.Module:
        """The run's encoders with the cosine head at this method's `scale`.

        The cosine head *is* the method, so it replaces the run's fusion head; a run that
        asks for another head than the default concat is refused rather than silently
        given a different model than its spec records.
        """
        spec = self.ctx.model_spec
        if FUSIONS.canonical(spec.fusion) != "concat":
            raise SpecError(f"{NAME}: fusion {spec.fusion!r} is not accepted; {NAME} builds its "
                            f"own cosine head (its scale is the method's `scale`), which "
                            f"replaces the default concat head")
        cosine = replace(spec, fusion="cosine", fusion_options={"scale": self.params.scale})
        return build_multimodal_model(self.ctx.info, cosine)

    def forward(self, model: MultimodalModel, batch: Batch, step: StepInfo) -> ForwardOut:
        """The plain forward, plus the logs: mean cosine with the true class row and mean ‖h_m‖."""
        out = super().forward(model, batch, step)
        labels = batch["label"][:, None]
        for i, m in enumerate(self.modalities):
            cos_true = out.unimodal_scoring(i).float().gather(1, labels) / self.params.scale
            self.log.add(f"cos_true_{m}", cos_true.mean())
            self.log.add(f"feat_norm_{m}", out.features[i].detach().float().norm(dim=1).mean())
        return out
