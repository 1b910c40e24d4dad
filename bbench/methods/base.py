"""The Method base class: the hook points of the one training loop (methods.md §1.4).

A method overrides only the hooks it needs; the loop owns everything else (device
placement, optimizer and scheduler, zeroing, validation, checkpoints, FLOP accounting).
Hooks receive the loop as the narrow `TrainingLoop` protocol (methods/loop.py), never the
Trainer. The default `train_step` is the Baseline step, and outside a windowed method's
active epochs the step falls back to exactly that (methods.md §1.5); `observe_grads` runs
on every step, inside and outside the window. What a method *is* (family, inputs, extra
passes, modality bounds, per-modality rows) is declared on its class (methods/facts.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bbench.config.fields import SpecError, param
from bbench.config.specs import ModelSpec
from bbench.data.base import Batch, DataInfo
from bbench.methods.facts import Family, RunInput
from bbench.methods.loop import StepInfo, TrainingLoop
from bbench.models.modes import float32_region
from bbench.models.multimodal import MultimodalModel, build_multimodal_model


@dataclass(frozen=True)
class NoParams:
    """Hyper-parameters of a method that has none."""


@dataclass(frozen=True)
class WindowParams:
    """The modulation window: active in epoch e iff start <= e <= end (0-based, inclusive)."""

    start: int = param(0, ge=0)
    end: int = param(80, ge=0)

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise SpecError(f"start={self.start} is after end={self.end}; need 0 <= start <= end")


@dataclass
class ForwardOut:
    """One training forward: features h_m (before any keep mask), fused logits, z_m accessors."""

    model: MultimodalModel
    features: list[torch.Tensor]
    logits: torch.Tensor
    keep: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def unimodal(self, index: int) -> torch.Tensor:
        """Loss accessor: z_m with the graph live (gradients reach encoder m and the head)."""
        return self.model.unimodal_logits(self.features, index)

    def unimodal_scoring(self, index: int) -> torch.Tensor:
        """Scoring accessor: z_m from sg(W), sg(b), sg(h); creates no gradient. Float32 even
        when the forward ran in a low-precision autocast region (scores are method math)."""
        return scoring_logits(self.model, self.features, [index])[0]


def scoring_logits(model: MultimodalModel, features: Sequence[torch.Tensor],
                   indices: Iterable[int]) -> list[torch.Tensor]:
    """z_m of each index from the scoring accessor: no gradient, in float32 whatever the
    forward's precision (no graph is recorded under no_grad, so float32 features need no
    detached copy)."""
    with torch.no_grad(), float32_region(features[0].device):
        features = [f if f.dtype == torch.float32 else f.float() for f in features]
        return [model.unimodal_logits(features, i) for i in indices]


@dataclass
class StepOutput:
    """What a step hands back to the Trainer for logging (outside FLOP accounting)."""

    loss: torch.Tensor
    out: ForwardOut | None = None


class EpochLog:
    """Accumulates a method's per-step quantities and reports their epoch means (§1.10)."""

    def __init__(self) -> None:
        self._sums: dict[str, float | torch.Tensor] = {}
        self._counts: dict[str, float | torch.Tensor] = {}
        self._values: dict[str, float] = {}

    def add(self, key: str, value: float | torch.Tensor,
            where: bool | torch.Tensor = True) -> None:
        """A per-step quantity; the epoch record holds its mean over the steps that added it.

        `where` (a bool, or a bool tensor) says whether this step counts, so a mean over
        e.g. conflict steps only needs no branch. Tensors are summed on their device and
        read once at the end of the epoch: logging adds no host synchronisation to a step.
        """
        if isinstance(value, torch.Tensor) or isinstance(where, torch.Tensor):
            device = value.device if isinstance(value, torch.Tensor) else where.device
            w = torch.as_tensor(where, device=device).detach().double()
            v = torch.as_tensor(value, device=device).detach().double() * w
        else:
            w, v = float(where), float(value) * float(where)
        self._sums[key] = self._sums.get(key, 0.0) + v
        self._counts[key] = self._counts.get(key, 0.0) + w

    def set(self, key: str, value: float | torch.Tensor) -> None:
        """A per-epoch quantity (e.g. measured at epoch start); the last value is reported."""
        self._values[key] = float(value)

    def flush(self) -> dict[str, float]:
        record = {k: float(self._sums[k]) / float(self._counts[k]) for k in self._sums
                  if float(self._counts[k]) > 0}
        record.update(self._values)
        self._sums.clear()
        self._counts.clear()
        self._values.clear()
        return record


def method_seed(run_seed: int, name: str) -> int:
    """Seed of a method's own generator, from the run seed and the method name (§1.7)."""
    digest = hashlib.sha256(f"{run_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run when it is built."""

    info: DataInfo
    model_spec: ModelSpec
    seed: int
    device: torch.device
    run_spec: Any = None  # the resolved RunSpec (for procedures that need the optimizer config)
    # The finished runs the method declared as `inputs`, resolved by the runner (RunResult lists).
    inputs: dict[str, list[Any]] = field(default_factory=dict)


class Method:
    """Base class of every method; the defaults implement Baseline."""

    name: ClassVar[str] = "Method"
    family: ClassVar[Family] = Family.REFERENCE
    Params: ClassVar[type] = NoParams
    windowed: ClassVar[bool] = False
    param_aliases: ClassVar[dict[str, str]] = {}
    # Evaluation procedures (LinearProbe) replace training by `run_procedure`.
    procedure: ClassVar[bool] = False
    # How many modalities the method is defined for; a balancing method needs two to balance.
    min_modalities: ClassVar[int] = 1
    max_modalities: ClassVar[int | None] = None
    # Passes beyond Baseline's one forward and one backward per step (methods.md §2): the
    # method's training FLOPs must then exceed Baseline's on the same data and budget.
    extra_passes: ClassVar[bool] = False
    # One run (and one table row) per modality, with this parameter set to it (Unimodal).
    per_modality: ClassVar[str | None] = None
    # Finished runs the method needs first (resolved by the runner; methods/facts.py).
    inputs: ClassVar[tuple[RunInput, ...]] = ()
    # The run every balancing method is compared with (exactly one method declares it): the
    # default method, the reference of "FLOPs above" expectations and of bench's probe table.
    comparison_reference: ClassVar[bool] = False
    # Why the Shapley imbalance metric means nothing for this method's model (e.g. one that
    # ignores input masking), or None: the run then records the reason instead of an I.
    imbalance_undefined: ClassVar[str | None] = None

    def __init__(self, params: Any, ctx: RunContext) -> None:
        self.params = params
        self.ctx = ctx
        self.modalities: tuple[str, ...] = ctx.info.modalities
        self.generator = torch.Generator().manual_seed(method_seed(ctx.seed, self.name))
        self.log = EpochLog()

    @classmethod
    def modality_fit(cls, n: int) -> Literal["too few", "too many"] | None:
        """Whether `n` modalities are outside the declared bounds, and on which side."""
        if n < cls.min_modalities:
            return "too few"
        if cls.max_modalities is not None and n > cls.max_modalities:
            return "too many"
        return None

    @classmethod
    def label_for(cls, params: Any) -> str:
        """The run's label (directory stem, table row): the name, plus the modality for a
        per-modality method (`Unimodal-mor`); `params` is a Params object or a mapping."""
        if not cls.per_modality:
            return cls.name
        value = params[cls.per_modality] if isinstance(params, dict) else getattr(params, cls.per_modality)
        return f"{cls.name}-{value}"

    def run_label(self) -> str:
        """Name stem of the run directory (and of the method's table row)."""
        return self.label_for(self.params)

    def run_procedure(self, data: Any, run_dir: Any, device: torch.device) -> dict[str, Any]:
        """For `procedure` methods: do the work and return the metrics."""
        raise TypeError(f"{self.name} trains through the Trainer; it has no procedure")

    # -- model ----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_multimodal_model(self.ctx.info, self.ctx.model_spec)

    # -- window ---------------------------------------------------------------------------
    def active(self, epoch: int) -> bool:
        if not self.windowed:
            return True
        return self.params.start <= epoch <= self.params.end

    def active_epochs(self, epochs: int) -> int:
        """How many of a run's `epochs` the method acts in (all of them unless windowed)."""
        return sum(self.active(e) for e in range(epochs))

    # -- hooks (override what the algorithm needs) -----------------------------------------
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (e.g. per-modality learning rates).

        The loop builds the optimizer (and binds the scheduler) from these, and a resumed run
        restores their state. A group may set its own `lr`, `weight_decay`, ...; unset keys
        take the run's optimizer settings.
        """
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def on_fit_start(self, loop: TrainingLoop) -> None:
        """(g) auxiliary models and method state.

        Runs at fit start and again when a run resumes, on the freshly built model and before
        the checkpoint is restored: build auxiliary models here, deterministically; what they
        learn during training belongs in `extra_state`, which the resume restores over them.
        """

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> Dataset | None:
        """(a)/(f) periodic procedures; may return this epoch's training set."""
        return None

    def phases(self, epoch: int) -> int:
        """Number of passes over the training set in epoch e."""
        return 1

    def forward(self, model: MultimodalModel, batch: Batch, step: StepInfo) -> ForwardOut:
        features = model.encode(batch)
        keep = batch.get("keep")
        return ForwardOut(model, features, model.fuse(features, keep), keep)

    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        return F.cross_entropy(out.logits, batch["label"])

    def backward(self, loop: TrainingLoop, loss: torch.Tensor, out: ForwardOut, batch: Batch,
                 step: StepInfo) -> None:
        """The step's backward, through `loop.backward` / `loop.grads` (never `loss.backward()`
        directly: under fp16 the loop scales the loss and unscales the new gradients)."""
        loop.backward(loss)

    def observe_grads(self, out: ForwardOut, batch: Batch, step: StepInfo) -> None:
        """Read (never write) the gradients of every step, inside and outside the window.

        Runs after backward and before `edit_grads`; `step.active` says whether the window
        is open (Greedy's learning-speed sums and AGM's running means continue outside it).
        """

    def edit_grads(self, out: ForwardOut, batch: Batch, step: StepInfo) -> None:
        """(d) between backward and the optimizer step; may read or rewrite `.grad`."""

    def after_step(self, out: ForwardOut, batch: Batch, step: StepInfo) -> None:
        """Bookkeeping after the optimizer step."""

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        """(f) after the epoch's training passes and validation, before the scheduler step.

        The loop has already kept the validated weights for model selection, so a method
        may re-initialise or edit the model here (ReLearning).
        """

    def step_branch(self, step: StepInfo) -> Hashable:
        """Which of the method's step variants runs at `step`, beyond the phase and the window
        (e.g. whether a curation window is open): with the batch shapes it decides the step's
        FLOPs, which the loop counts once per distinct value (engine/flops.py). Asked before
        the step runs; a method whose steps differ in cost must say how here (a test compares
        the totals with counting every step, for every method)."""
        return None

    def train_step(self, loop: TrainingLoop, batch: Batch, step: StepInfo) -> StepOutput:
        """(e) one optimizer update; outside the window, the plain Baseline step.

        The loop has put the model in training mode for the pass; forward and loss run in
        the run's precision (`loop.autocast()`), everything after them in float32.
        """
        if not step.active:
            return self.plain_step(loop, batch, step)
        loop.zero_grad()
        with loop.autocast():
            out = self.forward(loop.model, batch, step)
            loss = self.loss(out, batch, step)
        loop.check_finite(loss, step)
        self.backward(loop, loss, out, batch, step)
        self.observe_grads(out, batch, step)
        self.edit_grads(out, batch, step)
        loop.optimizer_step()
        self.after_step(out, batch, step)
        return StepOutput(loss.detach(), out)

    def plain_step(self, loop: TrainingLoop, batch: Batch, step: StepInfo) -> StepOutput:
        """One forward of the method's model, CE on its fused training logits, one backward,
        the gradient observer, one step (§1.5): Baseline's step, on whatever model the method
        built."""
        loop.zero_grad()
        with loop.autocast():
            out = Method.forward(self, loop.model, batch, step)
            loss = F.cross_entropy(out.logits, batch["label"])
        loop.check_finite(loss, step)
        loop.backward(loss)
        self.observe_grads(out, batch, step)
        loop.optimizer_step()
        return StepOutput(loss.detach(), out)

    # -- evaluation (§1.11) ---------------------------------------------------------------
    def eval_logits(self, model: nn.Module, batch: Batch, present: Sequence[bool] | None = None,
                    unimodal: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused logits and (unless `unimodal` is False) per-modality logits; absent
        modalities (present[m] False) are input-masked."""
        fused, features = self.default_fused(model, batch, present)
        return fused, self.default_unimodal(model, features) if unimodal else []

    @staticmethod
    def default_fused(model: nn.Module, batch: Batch, present: Sequence[bool] | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The default evaluation's first half: the fused logits and the features they came
        from (evaluation forms the per-modality half over many batches' features at once)."""
        features = model.encode(batch, present)
        return model.fuse(features), features

    @staticmethod
    def default_unimodal(model: nn.Module, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The default evaluation's second half: every modality's logits of `features`."""
        return [model.unimodal_logits(features, i) for i in range(len(model.modalities))]

    def eval_modalities(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(model.modalities)

    @classmethod
    def default_evaluation(cls) -> bool:
        """Whether the method evaluates with the model's own encode and head (it does not
        override `eval_logits`): together with the model's `separable` fact this decides
        whether Shapley's one-pass paths compute exactly the masked-evaluation predictions."""
        return cls.eval_logits is Method.eval_logits

    # -- state (§1.12) --------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Method state beyond the generator that a resumed run needs, as a snapshot: tensors
        the method goes on changing are returned as copies (`.clone()`), since the checkpoint
        after the last epoch is written on another thread while the run evaluates."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.load_extra_state(state["extra"])

    # -- helpers shared by methods ----------------------------------------------------------
    def scores(self, model: MultimodalModel, features: Sequence[torch.Tensor],
               labels: torch.Tensor) -> torch.Tensor:
        """s_m = Σ_i softmax(z_m,i)[y_i] for every m, from the scoring accessor (§1.6)."""
        with torch.no_grad(), float32_region(labels.device):
            return torch.stack([z.softmax(1).gather(1, labels[:, None]).sum() for z in
                                scoring_logits(model, features, range(len(self.modalities)))])


def encoder_weight_tensors(model: MultimodalModel) -> list[tuple[int, nn.Parameter]]:
    """EW(m): (modality index, parameter) for every encoder parameter with ndim >= 2 (§1.3)."""
    return [(i, p) for i, m in enumerate(model.modalities)
            for p in model.encoders[m].parameters() if p.ndim >= 2 and p.requires_grad]
