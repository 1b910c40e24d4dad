"""ReconBoost (methods.md §7.5): alternating boosting of one modality learner at a time,
each stage followed by a correction of the whole ensemble.

Model: encoders E_m, one shared head H = Linear(d_max → K) on zero-padded features, learner
f_m = H(pad(h_m)), and a learnable boost rate β; the ensemble is F = β·Σ_m f_m.

An active epoch is, for each modality m in modality order, `stage_epochs` passes of stage m
followed by `correct_epochs` correction passes, so M·(stage_epochs + correct_epochs) passes:
- stage m: F_{−m} = β·Σ_{k≠m} f_k under no-grad with the other encoders in eval mode,
  q = softmax(F_{−m}), p = softmax(f_m), L = mean_i [(w1 − w2·q_{i,y_i})/K]·(−log p_{i,y_i});
  only enc(m) and H get gradients (β and the other encoders get none, so the optimizer step,
  zeroing with set_to_none=True, leaves them bit for bit as they were);
- correction: CE(F, y) with every encoder in train mode; every parameter, β included.
Outside the window an epoch is one correction pass.

The BalanceMM "GA" term (an MSE between the current and the previous learners' predictions,
both detached) changes no gradient and is omitted (the spec's pitfall). The run's fusion
setting does not apply: the shared head is part of the method. β lives in the model and is
checkpointed with it; the method keeps no other state.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bbench.config.fields import LogUniform, SpecError, param
from bbench.methods.base import ForwardOut, Method, StepInfo, StepOutput, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.encoders import build_encoder
from bbench.models.fusion import SharedHead
from bbench.models.multimodal import MultimodalModel, apply_keep

NAME = "ReconBoost"


@dataclass(frozen=True)
class ReconBoostParams(WindowParams):
    stage_epochs: int = param(1, ge=1, doc="passes of each modality's boosting stage per epoch")
    correct_epochs: int = param(1, ge=0, doc="ensemble-correction passes after each stage")
    weight1: float = param(5.0, gt=0, doc="w1 of the stage weight (w1 - w2 q_y)/K")
    weight2: float = param(1.0, ge=0, doc="w2 of the stage weight; 0 <= weight2 <= weight1")
    boost_init: float = param(0.01, gt=0, search=LogUniform(1e-3, 0.1),
                              doc="initial boost rate beta")
    T_epochs: Optional[int] = param(None, ge=1, doc="BalanceMM's T_epochs: sets both stage_epochs "
                                                    "and correct_epochs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.weight2 <= self.weight1:
            raise SpecError(f"{NAME}: weight2={self.weight2!r} is out of range; need "
                            f"0 <= weight2 <= weight1 (weight1={self.weight1!r})")
        if self.T_epochs is not None:
            # BalanceMM's one knob for both pass counts. It is folded into them and cleared, so
            # `T_epochs=n` and `stage_epochs=n, correct_epochs=n` are the same run (and spec).
            n = self.T_epochs
            defaults = {f.name: f.default for f in fields(self)}
            for key in ("stage_epochs", "correct_epochs"):
                if getattr(self, key) not in (defaults[key], n):
                    raise SpecError(f"{NAME}: T_epochs={n} sets stage_epochs and correct_epochs; "
                                    f"{key}={getattr(self, key)} contradicts it. Give T_epochs or "
                                    f"stage_epochs/correct_epochs")
            object.__setattr__(self, "stage_epochs", n)
            object.__setattr__(self, "correct_epochs", n)
            object.__setattr__(self, "T_epochs", None)


class ReconBoostModel(MultimodalModel):
    """Encoders, the shared head H: Linear(d_max → K) on zero-padded features, and β.

    `unimodal_logits` is the learner f_m = H(pad(h_m)); `fuse` (and so `forward`) is the
    ensemble β·Σ_m f_m. The Shapley one-pass paths read the head alone, without β, so the
    model declares itself not separable (evaluation then masks by passes).
    """

    separable = False

    def __init__(self, modalities: Sequence[str], encoders: Mapping[str, nn.Module],
                 num_classes: int, boost_init: float) -> None:
        head = SharedHead([encoders[m].out_dim for m in modalities], num_classes)
        super().__init__(modalities, encoders, head)
        self.beta = nn.Parameter(torch.tensor(float(boost_init)))

    def learner(self, features: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        """f_m = H(pad(h_m))."""
        return self.head.unimodal(features, index)

    def ensemble(self, learners: Sequence[torch.Tensor]) -> torch.Tensor:
        """β·Σ of the given learners' logits."""
        return self.beta * torch.stack(list(learners)).sum(0)

    def fuse(self, features: Sequence[torch.Tensor],
             keep: torch.Tensor | None = None) -> torch.Tensor:
        features = apply_keep(features, keep)
        return self.ensemble([self.learner(features, i) for i in range(len(self.modalities))])


def stage_weights(q_true: torch.Tensor, weight1: float, weight2: float,
                  num_classes: int) -> torch.Tensor:
    """Per-sample stage weight (w1 − w2·q_y)/K: non-increasing in q_y, decreasing if w2 > 0."""
    return (weight1 - weight2 * q_true) / num_classes


def stage_loss(learner: torch.Tensor, others: torch.Tensor, labels: torch.Tensor,
               weight1: float, weight2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample loss [(w1 − w2·q_y)/K]·(−log p_y), q_y) with q = softmax(others) (no
    gradient) and p = softmax(learner); log p from log_softmax, in float32 or wider."""
    dtype = torch.promote_types(learner.dtype, torch.float32)
    y = labels[:, None]
    with torch.no_grad():
        q_true = others.detach().to(dtype).softmax(1).gather(1, y).squeeze(1)
    nll = -learner.to(dtype).log_softmax(1).gather(1, y).squeeze(1)
    return stage_weights(q_true, weight1, weight2, learner.shape[1]) * nll, q_true


@register_method()
class ReconBoost(Method):
    name = NAME
    family = Family.OPTIMIZATION
    Params = ReconBoostParams
    windowed = True
    min_modalities = 2  # boosts modalities against each other
    extra_passes = True  # M·(stage + correction) passes an epoch (methods.md §2)
    imbalance_undefined = ("the ReconBoost model ignores input masking (methods.md §7.5), which "
                           "makes the Shapley imbalance metric meaningless for this method")

    def build_model(self) -> nn.Module:
        info, spec = self.ctx.info, self.ctx.model_spec
        encoders = {m: build_encoder(spec.encoder_for(m), info.input_shapes[m], m)
                    for m in self.modalities}
        return ReconBoostModel(self.modalities, encoders, info.num_classes, self.params.boost_init)

    # -- epoch structure --------------------------------------------------------------------
    def phases(self, epoch: int) -> int:
        if not self.active(epoch):
            return 1
        return len(self.modalities) * (self.params.stage_epochs + self.params.correct_epochs)

    def stage_modality(self, step: StepInfo) -> int | None:
        """Index of the modality whose stage this pass is, or None for a correction pass."""
        if not step.active:
            return None
        index, within = divmod(step.phase, self.params.stage_epochs + self.params.correct_epochs)
        return index if within < self.params.stage_epochs else None

    # -- steps ------------------------------------------------------------------------------
    def forward(self, model: ReconBoostModel, batch, step: StepInfo) -> ForwardOut:
        features = model.encode(batch)
        keep = batch.get("keep")
        return ForwardOut(model, features, model.fuse(features, keep), keep)

    def train_step(self, loop: TrainingLoop, batch, step: StepInfo) -> StepOutput:
        index = self.stage_modality(step)
        if index is None:
            return self.correction_step(loop, batch, step)
        return self.stage_step(loop, batch, step, index)

    def stage_step(self, loop: TrainingLoop, batch, step: StepInfo, index: int) -> StepOutput:
        """Stage m: the boosting loss on f_m against the other learners' ensemble F_{−m}."""
        model: ReconBoostModel = loop.model
        m = self.modalities[index]
        others = [k for k in range(len(self.modalities)) if k != index]
        loop.zero_grad()
        for k in others:
            model.encoders[self.modalities[k]].eval()
        try:
            with loop.autocast():
                with torch.no_grad():
                    features: list[torch.Tensor | None] = [None] * len(self.modalities)
                    for k in others:
                        features[k] = model.encoders[self.modalities[k]](batch[self.modalities[k]])
                    rest = model.ensemble([model.learner(features, k) for k in others])
                features[index] = model.encoders[m](batch[m])
                learner = model.learner(features, index)
                per_sample, q_true = stage_loss(learner, rest, batch["label"],
                                                self.params.weight1, self.params.weight2)
                loss = per_sample.mean()
            loop.check_finite(loss, step)
            loop.backward(loss)
            loop.optimizer_step()
        finally:
            for k in others:
                model.encoders[self.modalities[k]].train()
        self.log.add(f"stage_loss_{m}", loss.detach())
        self.log.add(f"q_true_{m}", q_true.mean())
        self.log.add("beta", model.beta.detach())
        # For the loop's training accuracy: the ensemble as this step saw it.
        logits = (rest + model.beta.detach() * learner.detach()).detach()
        return StepOutput(loss.detach(), ForwardOut(model, features, logits))

    def correction_step(self, loop: TrainingLoop, batch, step: StepInfo) -> StepOutput:
        """CE(β·Σ_m f_m, y) with every encoder training; every parameter, β included."""
        loop.zero_grad()
        with loop.autocast():
            out = self.forward(loop.model, batch, step)
            loss = F.cross_entropy(out.logits, batch["label"])
        loop.check_finite(loss, step)
        loop.backward(loss)
        self.observe_grads(out, batch, step)
        loop.optimizer_step()
        self.log.add("correct_loss", loss.detach())
        self.log.add("beta", loop.model.beta.detach())
        return StepOutput(loss.detach(), out)

    # -- evaluation (§1.11) -----------------------------------------------------------------
    def eval_logits(self, model: ReconBoostModel, batch, present: Sequence[bool] | None = None,
                    unimodal: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """β·Σ_m f_m and f_m; absent modalities (present[m] False) get a zero raw input."""
        features = model.encode(batch, present)
        learners = [model.learner(features, i) for i in range(len(model.modalities))]
        return model.ensemble(learners), (learners if unimodal else [])
