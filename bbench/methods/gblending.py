"""GBlending (methods.md §6.6): gradient blending, after Wang, Tran & Feiszli (CVPR 2020).

Why: a multimodal network trained on the fused loss alone overfits faster than its
unimodal parts and learns them badly. Gradient blending trains on a weighted sum of the
unimodal losses and the fused loss, each head weighted by how much it generalises per unit
of overfitting, so a head that mostly overfits contributes little gradient.

The K_h = M + 1 heads are the split-head logits z_m of every modality (the loss accessor:
gradients reach encoder m and the head) and the fused z. An active step minimises
L = Σ_m w_m CE(z_m, y) + w_fused CE(z, y). The weights are estimated at the start of active
epochs: online at start, start + N, start + 2N, ...; offline at start only. For each head
k a deep copy of the current model is trained for N epochs with CE(z_k, y) (fresh optimizer
from the run's optimizer settings at the base learning rate, no scheduler; the shared
`fit_copy`), recording the sample-weighted mean training loss L^T_j of epochs j = 1 and N
and the mean validation loss L^V_j of the head after them (eval mode, validation split:
the test split is never seen). Then G_k = L^V_1 − L^V_N, ΔO_k = (L^V_N − L^T_N) −
(L^V_1 − L^T_1), w̃_k = max(G_k, 0) / (ΔO_k² + 1e-12), w = w̃ / Σ w̃, uniform if every w̃_k
is 0. Means, not sums over batches: a sum grows with the number of batches, so the
train-minus-validation overfitting term would measure the sizes of the two splits.

The estimation leaves the run untouched: the main model, its buffers and its optimizer
state are never written (the copies are deep copies), the global random states are saved
and restored around it (a copy's dropout draws from them), and a copy reads the training
split through its own loader, shuffled by a generator seeded from the method generator,
never the main run's (seeded per epoch). All M + 1 copies of one estimation see the same
batch order, so their losses are comparable. Its FLOPs and time are training cost: it
runs in `on_epoch_start`, which the Trainer counts in full.

Departures from BalanceMM, as methods.md states them: a unimodal copy trains through the
split head z_k (BalanceMM: head k on the zero-padded fused output), and the overfitting
term is max(G, 0) with G = L^V_1 − L^V_N (BalanceMM: |G/O²| with the sign of G flipped).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bbench.config.fields import SpecError, param
from bbench.config.specs import OptimizerSpec
from bbench.data.base import Batch
from bbench.engine.checkpoint import rng_state, set_rng_state
from bbench.engine.copies import fit_copy
from bbench.methods.base import ForwardOut, Method, RunContext, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.multimodal import MultimodalModel

FUSED = "fused"
"""Name of the fused head in the weights' and statistics' log keys (w_fused, G_fused)."""


@dataclass(frozen=True)
class GBlendingParams(WindowParams):
    mode: Literal["online", "offline"] = param(
        "online", doc="online: weights re-estimated every super_epoch epochs; offline: once, "
                      "at start")
    super_epoch: int = param(10, ge=2, doc="N: epochs each copy trains per estimation, and "
                                           "the online re-estimation period")
    start: int = param(0, ge=0)
    end: int = param(80, ge=0)


@dataclass(frozen=True)
class HeadFit:
    """One head's copy training: losses after epochs 1 and N, and what they give."""

    train_losses: tuple[float, float]  # (L^T_1, L^T_N)
    val_losses: tuple[float, float]    # (L^V_1, L^V_N)

    @property
    def generalisation(self) -> float:
        """G = L^V_1 − L^V_N: how much the validation loss fell."""
        return self.val_losses[0] - self.val_losses[1]

    @property
    def overfitting(self) -> float:
        """ΔO = O_N − O_1 with O_j = L^V_j − L^T_j: how much the train/validation gap grew."""
        return ((self.val_losses[1] - self.train_losses[1])
                - (self.val_losses[0] - self.train_losses[0]))


def blend_weights(generalisation: Sequence[float], overfitting: Sequence[float]) -> torch.Tensor:
    """w_k = w̃_k / Σ w̃ with w̃_k = max(G_k, 0) / (ΔO_k² + 1e-12); uniform when every w̃_k = 0.

    Float64, so that a head with ΔO ≈ 0 (w̃ up to ~1e12·G) does not swamp the others' digits.
    """
    G = torch.tensor(generalisation, dtype=torch.float64)
    dO = torch.tensor(overfitting, dtype=torch.float64)
    raw = G.clamp_min(0) / (dO.square() + 1e-12)
    total = raw.sum()
    if total > 0:
        return raw / total
    return torch.full_like(raw, 1.0 / raw.numel())


def head_logits(model: MultimodalModel, batch: Batch, head: int) -> torch.Tensor:
    """z_k of head k on a batch: the split-head z_m (loss accessor) for k < M, z for k = M.

    A unimodal head runs encoder m only: z_m reads h_m alone (the concat head's W_m h_m +
    b/M), and a head that defines z_m by zeroing the other features gets the zeros it would
    make, so the other encoders' forward would be spent for nothing.
    """
    if head == len(model.modalities):
        return model(batch)
    h = model.encoders[model.modalities[head]](batch[model.modalities[head]])
    features = [h if i == head else h.new_zeros(h.shape[0], d)
                for i, d in enumerate(model.head.dims)]
    return model.unimodal_logits(features, head)


@register_method()
class GBlending(Method):
    name = "GBlending"
    family = Family.OBJECTIVE
    min_modalities = 2  # blends modalities' heads against each other
    extra_passes = True  # every estimation: (M + 1)·N copy epochs and 2(M + 1) validation passes
    Params = GBlendingParams
    windowed = True

    def __init__(self, params: GBlendingParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        if FUSED in self.modalities:
            raise SpecError(f"GBlending: a modality is called {FUSED!r}, the name of the fused "
                            f"head in its logs (w_{FUSED}); rename the modality")
        # w over the heads (modalities in order, then the fused head); None until estimated.
        self.weights: torch.Tensor | None = None

    @property
    def heads(self) -> tuple[str, ...]:
        return (*self.modalities, FUSED)

    # -- estimation (hooks f, g) ----------------------------------------------------------
    def is_estimation_epoch(self, epoch: int) -> bool:
        """Online: epochs start, start + N, ... inside the window; offline: start only."""
        p = self.params
        if not self.active(epoch):
            return False
        if p.mode == "offline":
            return epoch == p.start
        return (epoch - p.start) % p.super_epoch == 0

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        if self.is_estimation_epoch(epoch):
            fits = self.estimate(loop, epoch)
            self.weights = blend_weights([f.generalisation for f in fits],
                                         [f.overfitting for f in fits]).float().to(self.ctx.device)
            for k, fit in zip(self.heads, fits):
                self.log.set(f"G_{k}", fit.generalisation)
                self.log.set(f"dO_{k}", fit.overfitting)
        if self.weights is not None:
            for k, w in zip(self.heads, self.weights.tolist()):
                self.log.set(f"w_{k}", w)
        return None

    def copy_optimizer(self) -> OptimizerSpec:
        """The run's optimizer settings (a copy trains at their base learning rate)."""
        if self.ctx.run_spec is None:
            raise SpecError("GBlending: its copies are trained with the run's optimizer "
                            "settings, and this method was built without a run spec; build "
                            "it with RunContext(..., run_spec=...) or through bbench.run")
        return self.ctx.run_spec.train.optimizer

    def estimate(self, loop: TrainingLoop, epoch: int) -> list[HeadFit]:
        """Train one copy per head for N epochs; the main run's state and random stream are
        left as they were (global RNG states saved and restored, CPU and CUDA)."""
        train = loop.data.train
        reference = loop.train_loader(train, epoch)  # the run's batch size, drop_last, workers
        if len(reference) == 0:
            raise ValueError(f"GBlending: the training split has {len(train)} samples, fewer "
                             f"than one batch of {reference.batch_size}; its copies would not "
                             f"train")
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        saved = rng_state()
        try:
            fits = [self.fit_head(loop, epoch, k, reference, seed) for k in range(len(self.heads))]
        finally:
            set_rng_state(saved)
        bad = [k for k, f in zip(self.heads, fits)
               if not torch.isfinite(torch.tensor([*f.train_losses, *f.val_losses])).all()]
        if bad:
            raise FloatingPointError(f"GBlending: the copy of head(s) {', '.join(bad)} reached a "
                                     f"non-finite loss in the estimation at epoch {epoch}; lower "
                                     f"the learning rate or check the inputs")
        return fits

    def fit_head(self, loop: TrainingLoop, epoch: int, head: int, reference: DataLoader,
                 seed: int) -> HeadFit:
        """A deep copy of the model trained for N epochs with CE(z_k, y), measured on train
        (during the epoch) and validation (after epochs 1 and N)."""
        n = self.params.super_epoch
        train = loop.data.train
        order = DataLoader(train, batch_size=reference.batch_size, shuffle=True,
                           drop_last=reference.drop_last, num_workers=reference.num_workers,
                           generator=torch.Generator().manual_seed(seed),
                           collate_fn=loop.data.collate)
        set_epoch = getattr(train, "set_epoch", None)

        def batches(j: int) -> Iterator[Batch]:
            if set_epoch is not None:  # the augmentations of epochs e, e + 1, ...; the Trainer
                set_epoch(epoch + j)   # sets epoch e again before its own pass
            return (loop.to_device(b) for b in order)

        def step_loss(model: MultimodalModel, batch: Batch) -> torch.Tensor:
            return F.cross_entropy(head_logits(model, batch, head), batch["label"])

        def score(model: MultimodalModel) -> float:
            return -self.validation_loss(loop, model, head)

        fitted = fit_copy(copy.deepcopy(loop.model), batches, step_loss, score, n,
                          self.copy_optimizer(), samples=lambda b: b["label"].shape[0],
                          score_epochs=(0, n - 1), keep_best=False)
        return HeadFit((fitted.train_losses[0], fitted.train_losses[-1]),
                       (-fitted.scores[0], -fitted.scores[-1]))

    @torch.no_grad()
    def validation_loss(self, loop: TrainingLoop, model: MultimodalModel, head: int) -> float:
        """Mean CE of head k over every validation sample, in float32 (the caller puts the
        model in eval mode: `fit_copy` scores in it)."""
        total = torch.zeros((), dtype=torch.float64, device=loop.device)
        count = 0
        for batch in loop.eval_loader(loop.data.val):
            batch = loop.to_device(batch)
            logits = head_logits(model, batch, head).float()
            total += F.cross_entropy(logits, batch["label"], reduction="sum").double()
            count += int(batch["label"].shape[0])
        return float(total) / max(count, 1)

    # -- step (hook c) --------------------------------------------------------------------
    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("GBlending: no blending weights at an active step; they are "
                               "estimated at the start of the window's first epoch")
        labels = batch["label"]
        losses = torch.stack([F.cross_entropy(out.unimodal(i), labels)
                              for i in range(len(self.modalities))]
                             + [F.cross_entropy(out.logits, labels)])
        return (self.weights.to(losses.dtype) * losses).sum()

    # -- state (§1.12) --------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"weights": None if self.weights is None else self.weights.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        if weights is not None and weights.shape != (len(self.heads),):
            raise ValueError(f"GBlending: {weights.shape[0]} blending weights, the run has "
                             f"{len(self.heads)} heads")
        self.weights = None if weights is None else weights.to(self.ctx.device).clone()
