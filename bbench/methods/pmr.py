"""PMR (methods.md §7.3): speed up the weaker modalities with a prototype cross-entropy.

At the start of each active epoch an eval-mode, no-grad pass over the first
n_p = max(1, ⌊proto_fraction·n_batches⌋) batches of a training loader shuffled by the method
generator gives per-class feature means P_new[m, c]; from the second computation on
P ← (1 − μ)·P_new + μ·P_old. A class absent from the pass keeps its previous prototype (on
the first computation: the mean of every feature collected). Per active step
q_{m,i,c} = −‖h_{m,i} − P[m, c]‖₂ (one `cdist` per modality on the live features), the
prototype score s^p_m = Σ_i softmax(sg(q_{m,i}))[y_i], β_m = α where s^p_m < max_k s^p_k
(else 0, so a tie adds nothing), and L = CE(z, y) + Σ_m β_m·CE(q_m, y).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bbench.config.fields import LogUniform, param
from bbench.data.base import Batch
from bbench.methods.base import ForwardOut, Method, StepInfo, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.models.modes import eval_mode
from bbench.models.multimodal import MultimodalModel


@dataclass(frozen=True)
class PMRParams(WindowParams):
    alpha: float = param(0.6, ge=0, search=LogUniform(0.05, 2.0),
                         doc="weight β of the prototype CE of a weaker modality")
    momentum_coef: float = param(0.5, ge=0, lt=1, doc="μ: weight of the previous prototypes")
    proto_fraction: float = param(0.1, gt=0, le=1,
                                  doc="share of the training batches the prototype pass reads")
    start: int = param(0, ge=0)
    end: int = param(80, ge=0)


@dataclass
class ClassSums:
    """Per-class feature sums of one prototype pass (float64) and the class counts."""

    sums: list[torch.Tensor]  # one [K, d_m] per modality
    counts: torch.Tensor      # [K], int64
    batches: int              # batches read


@torch.no_grad()
def class_feature_sums(model: MultimodalModel, batches: Iterable[Batch], num_classes: int,
                       to_device: Callable[[Batch], Batch] = lambda b: b) -> ClassSums:
    """Σ of h_m per class over `batches`, with the model in eval mode and no gradient.

    The model's mode is restored afterwards; no parameter or buffer changes.
    """
    sums: list[torch.Tensor] | None = None
    counts: torch.Tensor | None = None
    read = 0
    with eval_mode(model):
        for batch in batches:
            batch = to_device(batch)
            labels = batch["label"]
            features = model.encode(batch)
            if sums is None:
                sums = [torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device)
                        for f in features]
                counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
            for s, f in zip(sums, features):
                s.index_add_(0, labels.to(s.device), f.detach().double())
            counts.index_add_(0, labels, torch.ones_like(labels))
            read += 1
    if sums is None:
        return ClassSums([], torch.zeros(num_classes, dtype=torch.long), 0)
    return ClassSums(sums, counts, read)


@torch.no_grad()
def updated_prototypes(new: ClassSums, previous: Sequence[torch.Tensor] | None,
                       momentum: float) -> list[torch.Tensor]:
    """Prototypes after one pass: class means, the EMA with `previous` when there is one.

    Present classes: P_new[c] (first computation) or (1 − μ)·P_new[c] + μ·P_old[c]. Absent
    classes: P_old[c] unchanged, or, on the first computation, the mean of every feature the
    pass collected, so no prototype is ever 0/0. Float32 constants without gradient.
    """
    prototypes = []
    for m, sums in enumerate(new.sums):
        counts = new.counts.to(sums.device)
        present = counts > 0
        means = sums / counts.clamp_min(1)[:, None].double()
        if previous is None:
            overall = sums.sum(0) / counts.sum().clamp_min(1).double()
            proto = torch.where(present[:, None], means, overall[None, :])
        else:
            old = previous[m].to(device=sums.device, dtype=torch.float64)
            proto = torch.where(present[:, None], (1 - momentum) * means + momentum * old, old)
        prototypes.append(proto.float())
    return prototypes


def prototype_logits(features: Sequence[torch.Tensor], prototypes: Sequence[torch.Tensor]
                     ) -> list[torch.Tensor]:
    """q_m = −cdist(h_m, P_m) ([B, K] per modality), with the graph live through h_m.

    The direct (not matrix-product) Euclidean path: exact at zero distance and translation
    invariant, which the expanded ‖x‖² + ‖y‖² − 2xy form is not.
    """
    return [-torch.cdist(h.float(), P.to(h.device, torch.float32),
                         compute_mode="donot_use_mm_for_euclid_dist")
            for h, P in zip(features, prototypes)]


def prototype_scores(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """s^p_m = Σ_i softmax(sg(q_{m,i}))[y_i] for every m ([M], float32)."""
    return torch.stack([q.detach().float().softmax(1).gather(1, labels[:, None]).sum()
                        for q in logits])


def prototype_weights(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """β_m = α where s^p_m < max_k s^p_k, else 0: at an exact tie nobody gets the term."""
    return torch.where(scores < scores.max(), torch.full_like(scores, alpha),
                       torch.zeros_like(scores))


@register_method()
class PMR(Method):
    name = "PMR"
    family = Family.OPTIMIZATION
    min_modalities = 2  # balances modalities against each other
    extra_passes = True  # the prototype pass over part of train at each active epoch start
    Params = PMRParams
    windowed = True

    def __init__(self, params, ctx) -> None:
        super().__init__(params, ctx)
        self.prototypes: list[torch.Tensor] | None = None  # one [K, d_m] per modality

    # -- prototypes (hook f) ---------------------------------------------------------------
    def compute_prototypes(self, model: MultimodalModel, batches: Iterable[Batch],
                           to_device: Callable[[Batch], Batch] = lambda b: b) -> ClassSums | None:
        """One prototype computation from `batches` (any iterable; the pass the harness
        supplies, or a test's). Returns the pass's sums, or None when it read no batch (the
        prototypes are then left as they were)."""
        sums = class_feature_sums(model, batches, self.ctx.info.num_classes, to_device)
        if sums.batches == 0:
            return None
        self.prototypes = updated_prototypes(sums, self.prototypes, self.params.momentum_coef)
        self.log.set("missing_classes", int((sums.counts == 0).sum()))
        return sums

    def prototype_batches(self, loop: TrainingLoop, epoch: int) -> Iterable[Batch]:
        """The first n_p batches of a training-transform loader shuffled by the method generator.

        Batch size, drop_last and workers are those of the epoch's training loader; n_batches
        is that loader's length.
        """
        train = loop.data.train
        set_epoch = getattr(train, "set_epoch", None)
        if set_epoch is not None:  # augmentations keyed by epoch, as the epoch's own pass
            set_epoch(epoch)
        reference = loop.train_loader(train, epoch)
        n_p = max(1, int(self.params.proto_fraction * len(reference)))
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        loader = DataLoader(train, batch_size=reference.batch_size, shuffle=True,
                            drop_last=reference.drop_last, num_workers=reference.num_workers,
                            generator=torch.Generator().manual_seed(seed),
                            collate_fn=loop.data.collate)
        return itertools.islice(loader, n_p)

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None:
        if self.active(epoch):
            self.compute_prototypes(loop.model, self.prototype_batches(loop, epoch),
                                    loop.to_device)
        return None

    # -- step ------------------------------------------------------------------------------
    def loss(self, out: ForwardOut, batch: Batch, step: StepInfo) -> torch.Tensor:
        labels = batch["label"]
        ce = F.cross_entropy(out.logits, labels)
        if self.prototypes is None:
            raise RuntimeError("PMR: no prototypes at an active step; the prototype pass found "
                               "no training batch")
        q = prototype_logits(out.features, self.prototypes)
        scores = prototype_scores(q, labels)
        beta = prototype_weights(scores, self.params.alpha)
        pce = torch.stack([F.cross_entropy(q_m, labels) for q_m in q])
        batch_size = labels.shape[0]
        for i, m in enumerate(self.modalities):
            self.log.add(f"proto_score_{m}", scores[i] / batch_size)
            self.log.add(f"pce_{m}", beta[i] > 0)
            self.log.add(f"pce_loss_{m}", pce[i])
        out.extras.update(prototype_logits=q, prototype_scores=scores, beta=beta)
        return ce + (beta.to(pce.dtype) * pce).sum().to(ce.dtype)

    # -- state (§1.12) ---------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"prototypes": None if self.prototypes is None
                else [p.detach().cpu().clone() for p in self.prototypes]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        protos = state.get("prototypes")
        self.prototypes = None if protos is None else [p.clone() for p in protos]
