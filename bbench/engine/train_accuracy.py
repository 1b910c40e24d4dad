"""Training accuracy, fused and per modality, counted from the steps' own forwards.

Why deferred: the per-modality count (`train_acc_<m>`, the curve OGM-GE's paper plots) needs
each modality's scoring logits z_m on every training batch. Computed inside every step, its
M head products and the argmax counts cost small steps (mfeat: about 1.2 ms on a 2-core CPU)
15–20 % of their time, in operator dispatch rather than arithmetic. So a step only keeps what
the count needs: the fused logits and the features it already computed (references, no
copy, read under no_grad) and a copy of the fusion head's state as the step left it (a step's
scoring z_m uses the head after its update, as the per-step count did). Every `CHUNK` steps,
and when the epoch ends, the kept steps are evaluated together:

- a head whose z_m is affine in h_m (`FusionHead.unimodal_affine`: concat, sum, shared, and
  heads built on them) gives each modality's (W_m, b_m) of every kept copy at once, and one
  batched product per modality gives every step's z_m;
- any other head (cosine, FiLM, gated) is evaluated by one `torch.func.vmap` of its
  `unimodal` over the copies; one whose `unimodal` cannot be vmapped (data-dependent control
  flow) step by step, with the same copies.

Then one argmax and one comparison count every step's hits; the counts stay on the device
until the epoch's record reads them. The numbers are the per-step computation's (the same
head state and features, in float32) up to the rounding of a batched matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from bbench.methods.base import ForwardOut
from bbench.models.modes import float32_region

CHUNK = 32
"""Steps kept before their counts are evaluated: amortises the evaluation's fixed cost over
many steps while bounding what is held alive (ResNet18 pairs at batch 64: 8 MiB of features,
and 32 copies of the head)."""


class _AllUnimodal(nn.Module):
    """[M, B, K]: `head.unimodal(features, m)` of every modality, as a forward, so that
    `functional_call` can swap in a step's copy of the head's state."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.head.unimodal(features, m) for m in range(len(features))])


def unimodal_over_steps(head: nn.Module, names: Sequence[str], states: Sequence[torch.Tensor],
                        features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """[S, M, B, K]: every z_m of each step s, from the head with its state entry `names[i]`
    set to `states[i][s]` and the step's features `features[s]`; float32, no gradient."""
    n_modalities = len(features[0])
    state = dict(zip(names, states))
    with torch.no_grad(), float32_region(features[0][0].device):
        stacked = [torch.stack([f[m] for f in features]).float() for m in range(n_modalities)]
        affine = [head.unimodal_affine(state, m) for m in range(n_modalities)]
        if affine[0] is not None:  # (W_m [S, K, d_m], b_m [S, K]) of every modality
            return torch.stack([torch.baddbmm(b.float()[:, None], h, w.float().transpose(1, 2))
                                for (w, b), h in zip(affine, stacked)], 1)
        module = _AllUnimodal(head)
        named = {f"head.{k}": v for k, v in state.items()}
        try:
            return vmap(lambda one, feats: functional_call(module, one, (feats,)))(named, stacked)
        except RuntimeError:  # e.g. a head whose unimodal branches on a tensor's value
            return torch.stack([functional_call(module, {k: v[s] for k, v in named.items()},
                                                ([f.float() for f in feats],))
                                for s, feats in enumerate(features)])


class _HeadState:
    """A head's state entries, detached: they share the parameters' storage, so a clone of
    them is the state as it is now (a detached tensor's clone costs less than a parameter's
    under no_grad)."""

    def __init__(self, head: nn.Module) -> None:
        state = head.state_dict(keep_vars=True)
        self.names = tuple(state)
        self.live = [t.detach() for t in state.values()]

    def copy(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.live]


@dataclass
class _Step:
    model: nn.Module
    logits: torch.Tensor
    labels: torch.Tensor
    features: list[torch.Tensor]
    head_state: list[torch.Tensor]  # the head's state entries after the step, copied

    def group_key(self) -> tuple:
        """Steps evaluated together share a model and the shapes of their logits and labels
        (a model's features are [B, d_m] for the B of its logits)."""
        return id(self.model), self.logits.shape, self.labels.shape


class TrainingAccuracy:
    """One epoch's hit counts of the fused logits and of every modality's scoring logits.

    Built once per epoch: a head's state entries are looked up at its first step of the
    epoch and copied at every step (a method may rebuild a head between epochs, as
    ReLearning re-initialises, not within one).
    """

    def __init__(self) -> None:
        self._pending: list[_Step] = []
        self._hits: dict[tuple[str, ...], torch.Tensor] = {}
        self._heads: dict[int, _HeadState] = {}

    def add(self, out: ForwardOut, labels: torch.Tensor) -> None:
        """Keep one step's forward, with a copy of its head's state as it is now."""
        head = out.model.head
        state = self._heads.get(id(head))
        if state is None:
            state = self._heads[id(head)] = _HeadState(head)
        # The outputs as they are, not detached (a detach is one more operator call per
        # step): the step's backward has released the graph's saved tensors, and they are
        # read under no_grad. Never `out` itself: methods may hang more on it.
        self._pending.append(_Step(out.model, out.logits, labels, list(out.features),
                                   state.copy()))
        if len(self._pending) >= CHUNK:
            self._evaluate()

    def read(self) -> dict[tuple[str, ...], list[int]]:
        """{the step model's modalities: [fused hits, hits of each modality]} since the last
        read; the one host read of the counts, at the end of an epoch."""
        self._evaluate()
        hits, self._hits = self._hits, {}
        return {modalities: counts.tolist() for modalities, counts in hits.items()}

    @torch.no_grad()
    def _evaluate(self) -> None:
        groups: dict[tuple, list[_Step]] = {}
        for step in self._pending:
            groups.setdefault(step.group_key(), []).append(step)
        self._pending = []
        for steps in groups.values():
            model = steps[0].model
            states = [torch.stack(entry) for entry in zip(*(s.head_state for s in steps))]
            fused = torch.stack([s.logits for s in steps]).float()[:, None]  # [S, 1, B, K]
            unimodal = unimodal_over_steps(model.head, self._heads[id(model.head)].names,
                                           states, [s.features for s in steps])
            predicted = torch.cat([fused, unimodal], 1).argmax(-1)  # [S, 1 + M, B]
            labels = torch.stack([s.labels for s in steps])[:, None]
            hits = (predicted == labels).sum((0, 2))
            key = tuple(model.modalities)
            self._hits[key] = self._hits[key] + hits if key in self._hits else hits
