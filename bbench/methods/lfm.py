"""LFM (methods.md §6.7): mix the fused cross-entropy with an alignment loss between the
modalities' predictions, with a mixing weight that changes over training.

Per active step the loss is L = 2·(κ_cls·CE(z, y) + κ_align·A). A is the mean over the
M(M−1)/2 unordered modality pairs of A_ab = ½[KL(π‖p_a) + KL(π‖p_b)], π = ½(p_a + p_b),
p_m = softmax(z_m) from the loss accessor, averaged over the batch: the released form, with
the mixture as the first argument of each KL. It pulls the unimodal predictions together,
which is how the method narrows the modality gap, while CE keeps the fused prediction right.

The weights (κ_cls, κ_align), κ_cls + κ_align = 1, are set at the start of each active epoch:

- `learnable` (the default): a one-step hyper-gradient on a fixed held-out set V_α, the
  first `alpha_samples` validation samples in index order. In eval mode (no batch-norm
  statistic updates), L_tot = κ_cls·CE + κ_align·A on V_α; g_α is the mean of the entries of
  the Hessian-vector product (∂²L_tot/∂θ²)·g_cls, g_cls = ∂CE/∂θ held constant, over the
  first trainable parameter tensor (the original rule). It is computed exactly by double
  backward through torch.autograd, never by finite differences, and only that tensor's block
  of the product is requested: the same numbers as the whole product's first block, without
  the other blocks' work. The step size η halves at every epoch e > 0 with e mod 20 = 0, and
  κ_align ← clip(κ_align − η·g_α, 0.05, 0.95). The update writes no parameter, buffer or
  `.grad` (autograd.grad returns the gradients instead of accumulating them).
- `fitted`: the authors' polynomial fit of a 200-epoch learnable run,
  κ_cls(e) = clip(Σ_i a_i·min(e, 199)^i, 0.05, 0.95); it exceeds 1 near e = 180 and collapses
  after 200, hence the clip and the cap. No held-out set is read.

Outside the window the step is the plain Baseline step and κ is not updated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bbench.config.fields import LogUniform, param
from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, RunContext, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.modes import eval_mode
from bbench.models.multimodal import MultimodalModel

KAPPA_MIN, KAPPA_MAX = 0.05, 0.95
# κ_cls(e) = Σ_i a_i e^i, fitted by the authors (njustkmg/NeurIPS24-LFM) on a 200-epoch run.
FITTED_COEFFICIENTS = (0.204623704, 3.35472727e-3, 1.22989557e-4, -2.92947416e-6,
                       2.23835486e-8, -5.39717505e-11)
FITTED_LAST_EPOCH = 199  # the fit's range: later epochs use its last value
LR_HALVING_PERIOD = 20   # η halves at every active epoch e > 0 with e mod 20 = 0


@dataclass(frozen=True)
class LFMParams(WindowParams):
    schedule: Literal["learnable", "fitted"] = "learnable"
    lr_alpha: float = param(1e-4, gt=0, search=LogUniform(1e-5, 1e-3),
                            doc="η: step size of the learnable κ_align update")
    kappa_align_init: float = param(0.95, ge=KAPPA_MIN, le=KAPPA_MAX,
                                    doc="κ_align before the first learnable update")
    alpha_samples: int = param(8, ge=1, doc="size of V_α: the first validation samples")
    start: int = param(0, ge=0)
    end: int = param(80, ge=0)


def clip_kappa(value: float) -> float:
    """A weight clipped to [0.05, 0.95], so neither loss term is ever switched off."""
    return min(max(value, KAPPA_MIN), KAPPA_MAX)


def fitted_kappa_cls(epoch: int) -> float:
    """κ_cls(e) of the fitted schedule: the polynomial at min(e, 199), clipped (Horner, float64)."""
    e = float(min(epoch, FITTED_LAST_EPOCH))
    value = 0.0
    for a in reversed(FITTED_COEFFICIENTS):
        value = value * e + a
    return clip_kappa(value)


def alignment(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """A: the mean over unordered pairs (a, b) of ½[KL(π‖p_a) + KL(π‖p_b)], batch-averaged.

    With l = log_softmax(z) and δ = l_a − l_b, ½[KL(π‖p_a) + KL(π‖p_b)] = Σ_k π_k (log π_k −
    ½(l_a + l_b)_k) = Σ_k π_k log cosh(δ_k / 2). That form is a sum of non-negative terms, so
    A ≥ 0 holds in floating point too, it is exactly 0 when p_a = p_b (δ = 0) and exactly
    symmetric in a and b. log cosh(x) = |x| + log1p(expm1(−2|x|)/2) never overflows; its last
    rounding can go one ulp below 0 at tiny |x|, hence the clamp. All pairs in one batched
    expression over [P, B, K], in float32.
    """
    logp = torch.stack([z.float().log_softmax(-1) for z in logits])
    first, second = torch.triu_indices(len(logits), len(logits), 1, device=logp.device)
    la, lb = logp[first], logp[second]
    mixture = 0.5 * (la.exp() + lb.exp())
    half_gap = 0.5 * (la - lb).abs()
    log_cosh = (half_gap + torch.log1p(0.5 * torch.expm1(-2 * half_gap))).clamp_min(0)
    return (mixture * log_cosh).sum(-1).mean()


def objective_terms(out: ForwardOut, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE(z, y), A) of one forward, A from the loss accessor (graph live)."""
    ce = F.cross_entropy(out.logits, labels)
    align = alignment([out.unimodal(i) for i in range(len(out.model.modalities))])
    return ce, align


@register_method()
class LFM(Method):
    name = "LFM"
    family = Family.OBJECTIVE
    min_modalities = 2  # aligns modalities' predictions with each other
    extra_passes = True  # the learnable schedule's Hessian-vector product at each active epoch
    Params = LFMParams
    windowed = True
    param_aliases = {"method": "schedule"}  # BalanceMM's key for the schedule

    def __init__(self, params: LFMParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        if params.schedule == "fitted":
            self.kappa_cls = fitted_kappa_cls(0)
            self.kappa_align = 1.0 - self.kappa_cls
        else:  # the classification weight starts small (its swap is a public pitfall)
            self.kappa_align = params.kappa_align_init
            self.kappa_cls = 1.0 - self.kappa_align
        self.lr_alpha = params.lr_alpha

    # -- the weights (hook f) ------------------------------------------------------------------
    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        if not self.active(epoch):
            return None
        if self.params.schedule == "fitted":
            self.kappa_cls = fitted_kappa_cls(epoch)
            self.kappa_align = 1.0 - self.kappa_cls
        else:
            if epoch > 0 and epoch % LR_HALVING_PERIOD == 0:
                self.lr_alpha /= 2
            alpha_grad = float(self.alpha_gradient(loop.model, self.held_out(loop)))
            self.kappa_align = clip_kappa(self.kappa_align - self.lr_alpha * alpha_grad)
            self.kappa_cls = 1.0 - self.kappa_align
            self.log.set("alpha_grad", alpha_grad)
            self.log.set("lr_alpha", self.lr_alpha)
        self.log.set("kappa_cls", self.kappa_cls)
        self.log.set("kappa_align", self.kappa_align)
        return None

    def held_out(self, loop: TrainingLoop) -> Batch:
        """V_α: the first `alpha_samples` validation samples in index order (all of them when
        the split is smaller), as one batch on the loop's device. Never training or test data."""
        val = loop.data.val
        n = min(self.params.alpha_samples, len(val))
        if n == 0:
            raise ValueError("LFM: the validation split is empty; the learnable schedule reads its "
                             "held-out samples there (use schedule=fitted, or a validation split)")
        # Collated directly: a DataLoader's iterator would draw its base seed from the global
        # generator and so shift the main run's random stream (§1.7).
        return loop.to_device(loop.data.collate([val[i] for i in range(n)]))

    def alpha_gradient(self, model: MultimodalModel, batch: Batch) -> torch.Tensor:
        """g_α: mean of the first trainable tensor's block of (∂²L_tot/∂θ²)·g_cls on `batch`.

        θ is every trainable parameter (what the optimizer moves; a frozen backbone has no
        gradient to differentiate). Eval mode for the duration, then the previous mode.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        # The math attention kernel: the fused CPU/CUDA attention kernels have no double
        # backward, which the product needs (Transformer and ViT encoders).
        with eval_mode(model), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            features = model.encode(batch)
            out = ForwardOut(model, features, model.fuse(features))
            ce, align = objective_terms(out, batch["label"])
            total = self.kappa_cls * ce + self.kappa_align * align
            # A parameter the loss does not reach gets a zero gradient (materialize_grads),
            # one whose gradient is constant in θ adds nothing to the product.
            g_tot = torch.autograd.grad(total, params, create_graph=True, materialize_grads=True)
            g_cls = torch.autograd.grad(ce, params, retain_graph=True, materialize_grads=True)
            live = [(t, c) for t, c in zip(g_tot, g_cls) if t.requires_grad]
            (block,) = torch.autograd.grad([t for t, _ in live], params[0],
                                           grad_outputs=[c for _, c in live],
                                           materialize_grads=True)
        return block.float().mean()

    # -- the objective (hook c) ----------------------------------------------------------------
    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        ce, align = objective_terms(out, batch["label"])
        self.log.add("align_loss", align)
        return 2 * (self.kappa_cls * ce + self.kappa_align * align)

    # -- state (§1.12) -------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"kappa_cls": self.kappa_cls, "kappa_align": self.kappa_align,
                "lr_alpha": self.lr_alpha}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kappa_cls = float(state["kappa_cls"])
        self.kappa_align = float(state["kappa_align"])
        self.lr_alpha = float(state["lr_alpha"])
