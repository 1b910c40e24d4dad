"""A method that exists only in the tests: it exercises every part of the method contract.

`ContractProbe` declares an input run (a Baseline "teacher" the runner finds or trains),
builds an auxiliary model from it in `on_fit_start` (so a resumed run must rebuild it),
trains the encoders at a scaled learning rate through `param_groups`, and reads every
step's gradients in `observe_grads`, inside and outside its window (state that a resume
must restore). Nothing under bbench/ names it: registering it is all it takes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bbench.config.fields import param
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams
from bbench.methods.facts import Family, RunInput
from bbench.methods.registry import METHODS
from bbench.models.multimodal import build_multimodal_model

NAME = "ContractProbe"


@dataclass(frozen=True)
class ContractProbeParams(WindowParams):
    start: int = param(1, ge=0)
    end: int = param(80, ge=0)
    kd: float = param(0.5, ge=0, doc="weight of the distillation term from the teacher")
    encoder_lr_scale: float = param(0.5, gt=0)


class ContractProbe(Method):
    name = NAME
    family = Family.OPTIMIZATION
    Params = ContractProbeParams
    windowed = True
    min_modalities = 2
    extra_passes = True  # the teacher's forward in every active step
    inputs = (RunInput("teacher", "Baseline"),)

    def __init__(self, params, ctx) -> None:
        super().__init__(params, ctx)
        self.fit_starts = 0
        self.teacher: torch.nn.Module | None = None
        self.grad_sq = torch.zeros(len(self.modalities), dtype=torch.float64)
        self.observed = 0

    def param_groups(self, model):
        encoders = [p for m in model.modalities for p in model.encoders[m].parameters()]
        lr = self.ctx.run_spec.train.optimizer.lr
        return [{"params": encoders, "lr": lr * self.params.encoder_lr_scale},
                {"params": list(model.head.parameters())}]

    def on_fit_start(self, loop) -> None:
        self.fit_starts += 1
        source = self.ctx.inputs["teacher"][0]
        teacher = build_multimodal_model(self.ctx.info, self.ctx.model_spec)
        teacher.load_state_dict(torch.load(source.run_dir / "best_model.pt", weights_only=True))
        self.teacher = teacher.to(loop.device).eval().requires_grad_(False)

    def observe_grads(self, out: ForwardOut, batch, step: StepInfo) -> None:
        for i, m in enumerate(out.model.modalities):
            sq = sum(float(p.grad.double().square().sum())
                     for p in out.model.encoders[m].parameters() if p.grad is not None)
            self.grad_sq[i] += sq
            self.log.add(f"gradnorm_{m}", sq ** 0.5)
        self.observed += 1
        self.log.add("observed_active", float(step.active))

    def loss(self, out: ForwardOut, batch, step: StepInfo) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(batch).softmax(1)
        kd = F.kl_div(out.logits.log_softmax(1), target, reduction="batchmean")
        return F.cross_entropy(out.logits, batch["label"]) + self.params.kd * kd

    def extra_state(self) -> dict:
        return {"grad_sq": self.grad_sq.clone(), "observed": self.observed}

    def load_extra_state(self, state: dict) -> None:
        self.grad_sq = state["grad_sq"].clone()
        self.observed = state["observed"]


def register() -> type[Method]:
    METHODS.add(NAME, ContractProbe)
    return ContractProbe


def unregister() -> None:
    METHODS.remove(NAME)
