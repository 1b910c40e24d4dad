"""UMT (methods.md §6.2): distil every encoder towards a unimodal teacher's features.

Joint training lets the dominant modality carry the loss, so the weak modality's encoder
stops learning (Du et al., ICML 2023, "On uni-modal feature learning in supervised
multi-modal learning"). UMT anchors each encoder to the features a model of that modality
alone learns: teacher T_m is the encoder of the best-validation model of a finished
Unimodal run of modality m with the same data, model, training settings and seed. The
teachers are declared `inputs`, so the runner finds those runs under the output root (by
spec hash) or trains them first, once; `teacher_runs` names them explicitly instead.

Per active step, with h_m^T = T_m(x_m) computed under no-grad,

    L = CE(z, y) + λ · Σ_m mean_{i,j} (h_{m,ij} − h^T_{m,ij})²,

the mean over batch and feature dimensions; outside the window the step is the plain CE
step. The MSE term depends on h_m alone, so its gradient reaches enc(m) and never the
fusion head. M-generic: one teacher and one MSE term per modality.

The teachers are frozen (eval mode, `requires_grad=False`) and kept outside the student
model: the loop's `model.train()` never reaches them (BN statistics cannot drift: the
pitfall of public implementations), the optimizer never sees them, and they are neither
checkpointed with the model nor part of model selection. Their forward runs inside the step,
so the training FLOPs count it. A resumed run rebuilds them from the same input runs in
`on_fit_start`; they learn nothing, so the method has no state beyond its generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bbench.config.fields import LogUniform, SpecError, param, to_dict
from bbench.data.base import Batch
from bbench.engine.selected import load_selected_model
from bbench.methods.base import ForwardOut, Method, RunContext, StepInfo, WindowParams
from bbench.methods.facts import Family, RunInput
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method

NAME = "UMT"
TEACHER_METHOD = "Unimodal"


@dataclass(frozen=True)
class UMTParams(WindowParams):
    scaling: float = param(10.0, ge=0, search=LogUniform(1.0, 100.0),
                           doc="λ: weight of the summed per-modality feature MSE")
    teacher_runs: tuple[str, ...] = param((), doc="Unimodal runs whose encoders are the teachers, "
                                                  "one per modality (default: found or trained)")


@register_method()
class UMT(Method):
    name = NAME
    family = Family.OBJECTIVE
    Params = UMTParams
    windowed = True
    min_modalities = 2  # the teachers pull every encoder, so that none is left behind
    extra_passes = True  # M teacher encoder forwards in every active step
    inputs = (RunInput("teachers", TEACHER_METHOD, per_modality=True, param="teacher_runs"),)

    def __init__(self, params: UMTParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self.teachers: tuple[nn.Module, ...] = ()

    # -- teachers (hook g) -------------------------------------------------------------------
    def on_fit_start(self, loop: TrainingLoop) -> None:
        # Runs again on resume: the teachers are rebuilt from the same finished runs, which
        # is all they are (they never learn), so nothing about them is checkpointed.
        self.use_teachers(loop, self._load_teachers(loop.device))

    def _load_teachers(self, device: torch.device) -> list[nn.Module]:
        """The encoder of each input run's selected model, in modality order."""
        found: dict[str, nn.Module] = {}
        this_dataset = to_dict(self.ctx.run_spec)["dataset"]
        for run in self.ctx.inputs["teachers"]:
            if run.method != TEACHER_METHOD:
                raise SpecError(f"{NAME}: {run.run_dir} is a {run.method} run, not a "
                                f"{TEACHER_METHOD} run; a teacher is the encoder of a model "
                                f"trained on its modality alone")
            if run.spec["dataset"] != this_dataset:
                raise SpecError(f"{NAME}: the teacher run {run.run_dir} used dataset settings "
                                f"{run.spec['dataset']}, this run {this_dataset}; distil from "
                                f"teachers trained on the same data and split")
            m = run.spec["method_params"]["modality"]
            if m in found:
                raise SpecError(f"{NAME}: two teacher runs for modality {m!r}; give one per "
                                f"modality of {', '.join(self.modalities)}")
            found[m] = load_selected_model(run, self.ctx.info, device).model.encoders[m]
        missing = [m for m in self.modalities if m not in found]
        if missing:
            raise SpecError(f"{NAME}: no teacher run for modality {', '.join(map(repr, missing))}; "
                            f"give one {TEACHER_METHOD} run per modality of "
                            f"{', '.join(self.modalities)}")
        return [found[m] for m in self.modalities]

    def use_teachers(self, loop: TrainingLoop, teachers: Sequence[nn.Module]) -> None:
        """Freeze one teacher encoder per modality (modality order) and keep it for the steps.

        Held in a tuple, not as submodules of the student: `loop.model.train()` leaves them
        in eval mode, and neither the optimizer nor the model's checkpoint includes them.
        """
        if len(teachers) != len(self.modalities):
            raise ValueError(f"{NAME}: {len(teachers)} teachers for {len(self.modalities)} "
                             f"modalities ({', '.join(self.modalities)}); need one per modality")
        for m, teacher in zip(self.modalities, teachers):
            width, student = teacher.out_dim, loop.model.encoders[m].out_dim
            if width != student:
                raise ValueError(f"{NAME}: the teacher of modality {m!r} outputs {width} features "
                                 f"but the student encoder outputs {student}; the feature MSE "
                                 f"needs equal widths (train the teacher with the same encoder "
                                 f"config)")
        self.teachers = tuple(t.to(loop.device).eval().requires_grad_(False) for t in teachers)

    # -- the objective (hook c) ----------------------------------------------------------------
    def distillation(self, features: Sequence[torch.Tensor], batch: Batch) -> torch.Tensor:
        """[M]: mean_{i,j} (h_m − h_m^T)² per modality; live into h_m, none into the teachers."""
        with torch.no_grad():
            targets = [t(batch[m]) for t, m in zip(self.teachers, self.modalities)]
        return torch.stack([F.mse_loss(h, target) for h, target in zip(features, targets)])

    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        distill = self.distillation(out.features, batch)
        for m, value in zip(self.modalities, distill):
            self.log.add(f"distill_{m}", value)
        return F.cross_entropy(out.logits, batch["label"]) + self.params.scaling * distill.sum()
