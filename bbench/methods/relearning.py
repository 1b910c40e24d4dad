"""ReLearning (methods.md §7.4): diagnose each encoder by how well its features cluster on
train versus validation data, then softly re-initialise the encoders that over-fit.

θ₀ is a copy of the encoders' parameters taken at fit start, before any step. At an event
(end of an active epoch e ≥ 1 with e mod reinit_epoch = 0, fewer than reinit_num so far),
one eval pass extracts h_m for the whole train split (evaluation transforms) and the whole
validation split -- never test. Per modality and split, the features are min-max scaled to
[−1, 1] (fitted per split, constant dimensions → 0) and clustered by K-means with K = number
of classes; purity = (1/N) Σ_clusters max_c |cluster ∩ class c|. Then
gap_m = |purity_train − purity_val|, α_m = tanh(λ·gap_m), and every θ ∈ enc(m) (selected by
module membership, 1-D parameters included) becomes α_m θ₀ + (1 − α_m) θ. The head, the
buffers and the optimizer state are left as they are.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from bbench.config.fields import LogUniform, SpecError, param
from bbench.methods.base import Method, RunContext, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.modes import eval_mode

# tanh(λ·gap) < 1 for every finite λ·gap, but rounds to 1.0 in float64 from λ·gap ≈ 19.1 on;
# α is kept below 1 (methods.md §7.4: α_m ∈ [0, 1)), the largest double under 1.
_ALPHA_MAX = math.nextafter(1.0, 0.0)


@dataclass(frozen=True)
class ReLearningParams(WindowParams):
    move_lambda: float = param(3.0, ge=0, search=LogUniform(0.3, 10.0),
                               doc="λ: α_m = tanh(λ · purity gap of m)")
    reinit_epoch: int = param(15, ge=1, doc="events end the epochs that are multiples of this")
    reinit_num: int = param(2, ge=0, doc="at most this many events in a run")
    start: int = param(0, ge=0)
    end: int = param(80, ge=0)


def minmax_scale(features: torch.Tensor) -> torch.Tensor:
    """Each column (feature dimension) mapped linearly onto [−1, 1]; a constant column → 0.

    Fitted on `features` itself (one split), in float64.
    """
    x = features.detach().reshape(features.shape[0], -1).double()
    if x.shape[0] == 0:
        return x
    low, high = x.min(0).values, x.max(0).values
    span = high - low
    scaled = 2 * (x - low) / torch.where(span > 0, span, torch.ones_like(span)) - 1
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


def purity(clusters: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """(1/N) Σ_clusters max_c |cluster ∩ class c|: each cluster votes its majority class."""
    clusters = np.asarray(clusters, dtype=np.int64).ravel()
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if clusters.shape != labels.shape:
        raise ValueError(f"purity: {clusters.size} cluster assignments for {labels.size} labels")
    if clusters.size == 0:
        raise ValueError("purity: no samples")
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    _, class_ids = np.unique(labels, return_inverse=True)
    n_classes = int(class_ids.max()) + 1
    table = np.bincount(cluster_ids * n_classes + class_ids,
                        minlength=(int(cluster_ids.max()) + 1) * n_classes)
    return float(table.reshape(-1, n_classes).max(1).sum()) / clusters.size


def kmeans_purity(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Purity of K-means (K = num_classes, k-means++, seed 0, 10 inits, ≤ 300 iterations) on
    the min-max-scaled features of one split.

    A split with fewer samples than classes is clustered into as many clusters as it has
    samples (every sample its own cluster), since K-means cannot place more centres.
    """
    # A core dependency, imported here to keep `import bbench` light.
    from sklearn.cluster import KMeans

    n = int(features.shape[0])
    if n == 0:
        raise ValueError("ReLearning: a split has no samples; purity is undefined")
    x = minmax_scale(features).cpu().numpy()
    assignments = KMeans(n_clusters=min(num_classes, n), random_state=0, n_init=10,
                         max_iter=300).fit_predict(x)
    return purity(assignments, labels.cpu().numpy())


def relearn_alpha(gap: float, move_lambda: float) -> float:
    """α = tanh(λ·gap) ∈ [0, 1)."""
    return min(math.tanh(move_lambda * abs(gap)), _ALPHA_MAX)


def soft_reinit_(params: Sequence[torch.Tensor], theta0: Sequence[torch.Tensor],
                 alpha: float) -> None:
    """θ ← α θ₀ + (1 − α) θ in place, for every θ with its initial value θ₀; α = 0 is a no-op."""
    if alpha == 0:  # bit for bit unchanged (not even −0.0 → +0.0)
        return
    with torch.no_grad():
        for p, p0 in zip(params, theta0, strict=True):
            p.mul_(1 - alpha).add_(p0, alpha=alpha)


@register_method()
class ReLearning(Method):
    name = "ReLearning"
    family = Family.OPTIMIZATION
    min_modalities = 2  # compares modalities' over-fitting, balances them against each other
    extra_passes = True  # at events: an eval pass over train and validation, 2M K-means runs
    Params = ReLearningParams
    windowed = True

    def __init__(self, params: Any, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        if importlib.util.find_spec("sklearn") is None:  # fail before training, not at the event
            raise SpecError("ReLearning needs scikit-learn (its K-means is the reference); "
                            "pip install scikit-learn")
        self.events = 0
        # θ₀ per modality, aligned with `encoder_params(model, m)`.
        self.theta0: dict[str, list[torch.Tensor]] = {}

    # -- parameters -------------------------------------------------------------------------
    @staticmethod
    def encoder_params(model: nn.Module, modality: str) -> list[nn.Parameter]:
        """enc(m) by module membership (§1.3). Frozen parameters (a frozen pretrained backbone)
        never leave θ₀, so the rule leaves them as they are; they are neither copied nor moved."""
        return [p for p in model.encoders[modality].parameters() if p.requires_grad]

    def on_fit_start(self, loop: TrainingLoop) -> None:
        """θ₀ right after initialisation (on resume: the identically seeded fresh model, then
        the checkpoint's θ₀ is restored over it)."""
        self.theta0 = {m: [p.detach().clone() for p in self.encoder_params(loop.model, m)]
                       for m in self.modalities}

    # -- events -----------------------------------------------------------------------------
    def is_event(self, epoch: int) -> bool:
        p = self.params
        return (self.active(epoch) and epoch >= 1 and epoch % p.reinit_epoch == 0
                and self.events < p.reinit_num)

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        if self.is_event(epoch):
            self.relearn(loop)
        self.log.set("events", self.events)

    @torch.no_grad()
    def extract(self, loop: TrainingLoop,
                dataset: Dataset) -> tuple[list[torch.Tensor], torch.Tensor]:
        """h_m for every sample of `dataset` (eval mode, no grad), on the CPU, and the labels."""
        model = loop.model
        features: list[list[torch.Tensor]] = [[] for _ in self.modalities]
        labels: list[torch.Tensor] = []
        with eval_mode(model):
            for batch in loop.eval_loader(dataset):
                batch = loop.to_device(batch)
                for i, h in enumerate(model.encode(batch)):
                    features[i].append(h.detach().float().reshape(h.shape[0], -1).cpu())
                labels.append(batch["label"].cpu())
        return [torch.cat(f) for f in features], torch.cat(labels)

    def diagnose(self, loop: TrainingLoop) -> dict[str, dict[str, float]]:
        """Purities on train and validation, their gap and α, per modality (changes nothing)."""
        K = self.ctx.info.num_classes
        train_h, train_y = self.extract(loop, loop.data.train_for_eval)
        val_h, val_y = self.extract(loop, loop.data.val)
        result = {}
        for i, m in enumerate(self.modalities):
            p_train = kmeans_purity(train_h[i], train_y, K)
            p_val = kmeans_purity(val_h[i], val_y, K)
            gap = abs(p_train - p_val)
            result[m] = {"purity_train": p_train, "purity_val": p_val, "gap": gap,
                         "alpha": relearn_alpha(gap, self.params.move_lambda)}
        return result

    def relearn(self, loop: TrainingLoop) -> dict[str, dict[str, float]]:
        """One event: diagnose every modality first, then move each encoder towards θ₀."""
        diagnosis = self.diagnose(loop)
        for m, d in diagnosis.items():
            soft_reinit_(self.encoder_params(loop.model, m), self.theta0[m], d["alpha"])
            self.log.set(f"purity_train_{m}", d["purity_train"])
            self.log.set(f"purity_val_{m}", d["purity_val"])
            self.log.set(f"gap_{m}", d["gap"])
            self.log.set(f"reinit_{m}", d["alpha"])
        self.events += 1
        return diagnosis

    # -- state (§1.12) ------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"events": self.events,
                "theta0": {m: [t.clone() for t in ts] for m, ts in self.theta0.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        theta0 = state["theta0"]
        if set(theta0) != set(self.modalities):
            raise ValueError(f"ReLearning: θ₀ of modalities {sorted(theta0)}, the run has "
                             f"{sorted(self.modalities)}")
        for m, saved in theta0.items():
            built = self.theta0.get(m)
            if built is not None and [t.shape for t in built] != [t.shape for t in saved]:
                raise ValueError(f"ReLearning: θ₀ of {m!r} does not fit the encoder")
        device = next((t.device for ts in self.theta0.values() for t in ts), None)
        self.theta0 = {m: [t.detach().clone() if device is None else t.detach().to(device).clone()
                           for t in saved] for m, saved in theta0.items()}
        self.events = int(state["events"])
