"""Training accuracy, fused and per modality, counted from the steps' own forwards.

The fused count (`train_acc`) keeps each step's logits and labels and costs next to nothing.
The per-modality count (`train_acc_<m>`) is taken on request (`train.modality_train_acc`):
even deferred as below it costs a small model about 5 % of its training time (mfeat; the
head-state copy of every step and the batched scoring, docs/benchmarks.md), which the
default run should not pay for a diagnostic; every modality's validation accuracy is in
every epoch's record either way.

Why deferred: the per-modality count (`train_acc_<m>`, the curve OGM-GE's paper plots) needs
each modality's scoring logits z_m on every training batch. Computed inside every step, its
M head products and the argmax counts cost small steps (mfeat: about 1.2 ms on a 2-core CPU)
15–20 % of their time, in operator dispatch rather than arithmetic. So a step only keeps
what the count needs: the fused logits and the features it already computed (references,
no copy, read under no_grad) and a copy of the fusion head's state as the step left it (a
step's scoring z_m uses the head after its update, as the per-step count did), one
multi-tensor copy (`torch._foreach_copy_`, the kernel torch's optimizers use) into the
step's slot of room preallocated once per run. Every `CHUNK` steps, and when the epoch
ends, the kept steps are evaluated together:

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

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from bbench.methods.base import ForwardOut
from bbench.models.modes import float32_region

CHUNK = 32
"""Steps per chunk: amortises the evaluation's fixed cost over many steps while bounding the
memory a chunk holds (ResNet18 pairs at batch 64: 8 MiB of features, and 32 copies of the
head)."""


class _AllUnimodal(nn.Module):
    """[M, B, K]: `head.unimodal(features, m)` of every modality, as a forward, so that
    `functional_call` can swap in a step's copy of the head's state."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.head.unimodal(features, m) for m in range(len(features))])


def unimodal_over_steps(head: nn.Module, names: Sequence[str], states: Sequence[torch.Tensor],
                        features: Sequence[torch.Tensor]) -> torch.Tensor:
    """[S, M, B, K]: every z_m of each step s, from the head with its state entry `names[i]`
    set to `states[i][s]` and the step's features `features[m][s]` (`features[m]`: modality
    m's [S, B, d_m]); float32, no gradient."""
    state = dict(zip(names, states))
    with torch.no_grad(), float32_region(features[0].device):
        stacked = [f.float() for f in features]
        affine = [head.unimodal_affine(state, m) for m in range(len(stacked))]
        if affine[0] is not None:  # (W_m [S, K, d_m], b_m [S, K]) of every modality
            return torch.stack([torch.baddbmm(b.float()[:, None], h, w.float().transpose(1, 2))
                                for (w, b), h in zip(affine, stacked)], 1)
        module = _AllUnimodal(head)
        named = {f"head.{k}": v for k, v in state.items()}
        try:
            return vmap(lambda one, feats: functional_call(module, one, (feats,)))(named, stacked)
        except RuntimeError:  # e.g. a head whose unimodal branches on a tensor's value
            return torch.stack([functional_call(module, {k: v[s] for k, v in named.items()},
                                                ([f[s] for f in stacked],))
                                for s in range(stacked[0].shape[0])])


class _HeadState:
    """A head's state entries, detached: they share the parameters' storage, so a copy of
    them is the state as it is now."""

    def __init__(self, head: nn.Module) -> None:
        state = head.state_dict(keep_vars=True)
        self.names = tuple(state)
        self.live = [t.detach() for t in state.values()]


class _Chunk:
    """Up to CHUNK steps of one model and one logits shape: each step's fused logits and
    labels as the step produced them (references) and, when modalities are counted too, its
    features (references) and its head state, copied into the step's slot of room
    preallocated for CHUNK copies."""

    def __init__(self, model: nn.Module, head: _HeadState | None) -> None:
        self.model, self.head = model, head
        self.states = ([] if head is None else
                       [torch.empty((CHUNK, *t.shape), dtype=t.dtype, device=t.device)
                        for t in head.live])
        self.slots = [list(slot) for slot in zip(*(room.unbind(0) for room in self.states))]
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.features: list[Sequence[torch.Tensor]] = []

    def rebind(self, model: nn.Module, head: _HeadState | None) -> bool:
        """Copy from `model` and the head state `head` from now on; False (and unchanged) if
        that state's entries do not fit this chunk's room."""
        if head is not None and (head.names != self.head.names or any(
                t.shape != room.shape[1:] or t.dtype != room.dtype
                for t, room in zip(head.live, self.states))):
            return False
        self.model, self.head = model, head
        return True

    @property
    def filled(self) -> int:
        return len(self.logits)

    def add(self, logits: torch.Tensor, labels: torch.Tensor,
            features: Sequence[torch.Tensor]) -> bool:
        """Keep one step; True when the chunk is full. The outputs as they are, not detached
        (a detach is one more operator call per step): the step's backward has released
        the graph's saved tensors, and they are read under no_grad. The head's state is
        copied in one multi-tensor copy (its entries are detached: no graph is recorded)."""
        if self.head is not None:
            torch._foreach_copy_(self.slots[self.filled], self.head.live)
            self.features.append(features)
        self.logits.append(logits)
        self.labels.append(labels)
        return self.filled == CHUNK

    @torch.no_grad()
    def hits(self) -> torch.Tensor:
        """[1 + M] (or [1] for the fused logits alone): hits of the fused logits and of each
        modality's z_m over the kept steps; empties the chunk (its room is kept)."""
        n = self.filled
        predicted = torch.stack(self.logits).float().argmax(-1)[:, None]  # [S, 1, B]
        if self.head is not None:
            unimodal = unimodal_over_steps(self.model.head, self.head.names,
                                           [room[:n] for room in self.states],
                                           [torch.stack(f) for f in zip(*self.features)])
            predicted = torch.cat([predicted, unimodal.argmax(-1)], 1)  # [S, 1 + M, B]
        hits = (predicted == torch.stack(self.labels)[:, None]).sum((0, 2))
        self.logits, self.labels, self.features = [], [], []
        return hits


class TrainingAccuracy:
    """The hit counts of the fused logits and (`modalities`) of every modality's scoring
    logits, from the steps since the last `read`.

    One per run: its chunks' memory serves every epoch. A head's state entries are looked up
    at its first step after a read and copied at every step (a method may rebuild a head
    between epochs, as ReLearning re-initialises, not within one); a chunk no step used
    since the last read is let go with its model.
    """

    def __init__(self, modalities: bool = True) -> None:
        self.modalities = modalities
        self._chunks: dict[tuple, _Chunk] = {}
        self._used: set[tuple] = set()
        self._hits: dict[tuple[str, ...], torch.Tensor] = {}

    def add(self, out: ForwardOut, labels: torch.Tensor) -> None:
        """Keep what one step's count needs (never `out` itself: methods may hang more on it)."""
        # Steps evaluated together share a model and the shape of their logits (a model's
        # features are [B, d_m] for the B of its logits, its labels [B]).
        key = (id(out.model), out.logits.shape)
        if key not in self._used:  # its first step since the last read
            self._used.add(key)
            self._chunks[key] = self._bound(self._chunks.get(key), out.model)
        chunk = self._chunks[key]
        if chunk.add(out.logits, labels, out.features):
            self._count(chunk)

    def read(self) -> dict[tuple[str, ...], list[int]]:
        """{the step model's modalities: [fused hits, hits of each modality if counted]}
        since the last read; the one host read of the counts, at the end of an epoch."""
        for chunk in self._chunks.values():
            if chunk.filled:
                self._count(chunk)
        self._chunks = {key: self._chunks[key] for key in self._used}
        self._used = set()
        hits, self._hits = self._hits, {}
        return {modalities: counts.tolist() for modalities, counts in hits.items()}

    def _bound(self, chunk: _Chunk | None, model: nn.Module) -> _Chunk:
        """`chunk` (its key's from an earlier epoch) bound to the head's state entries as
        they are now, if they still fit its room; else a new chunk."""
        head = _HeadState(model.head) if self.modalities else None
        if chunk is not None and chunk.rebind(model, head):
            return chunk
        return _Chunk(model, head)

    def _count(self, chunk: _Chunk) -> None:
        hits = chunk.hits()
        key = tuple(chunk.model.modalities)
        self._hits[key] = self._hits[key] + hits if key in self._hits else hits
