"""Shapley values of the modalities and the imbalance degree I (metrics.md, Imbalance).

v(S) is the accuracy of the fused prediction with only the modalities in S present. All
2^M values come from one encoder pass whenever the model allows it (late fusion):
- linear heads: per-modality logit contributions go to the `subset_correct` kernel;
- other late-fusion heads: the head runs once on the 2^M feature variants stacked;
- anything else (custom evaluation, intermediate fusion): 2^M masked passes.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from bbench import ops
from bbench.data.base import move_batch
from bbench.engine.evaluate import Evaluates
from bbench.models.modes import eval_mode
from bbench.models.multimodal import MultimodalModel


Mask = Literal["input", "feature"]
EvalPath = Literal["one-pass-linear", "one-pass-stacked", "masked-passes"]


def subset_members(subset: int, num_modalities: int) -> tuple[int, ...]:
    """Modality indices in `subset` (bit m set ⇔ modality m present)."""
    return tuple(m for m in range(num_modalities) if subset >> m & 1)


def shapley_weights(num_modalities: int) -> list[float]:
    """w[|S|] = |S|! (M − |S| − 1)! / M! for coalitions S not containing the player."""
    M = num_modalities
    return [math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) for s in range(M)]


def shapley_from_values(values: Sequence[float], num_modalities: int) -> list[float]:
    """φ_i = Σ_{S ⊆ M∖{i}} w(|S|) [v(S ∪ {i}) − v(S)], with v indexed by subset bitmask."""
    M = num_modalities
    if len(values) != 1 << M:
        raise ValueError(f"need 2^{M} = {1 << M} subset values, got {len(values)}")
    w = shapley_weights(M)
    phi = []
    for i in range(M):
        bit = 1 << i
        phi.append(sum(w[bin(s).count("1")] * (values[s | bit] - values[s])
                       for s in range(1 << M) if not s & bit))
    return phi


def shapley_tensor(values: torch.Tensor) -> torch.Tensor:
    """Vectorised Shapley over the last axis: values [..., 2^M] → φ [..., M] (per-sample valuation)."""
    M = int(values.shape[-1]).bit_length() - 1
    w = shapley_weights(M)
    phi = []
    for i in range(M):
        bit = 1 << i
        without = [s for s in range(1 << M) if not s & bit]
        weights = torch.tensor([w[bin(s).count("1")] for s in without], dtype=values.dtype,
                               device=values.device)
        with_i = torch.tensor([s | bit for s in without], device=values.device)
        without_t = torch.tensor(without, device=values.device)
        diff = values.index_select(-1, with_i) - values.index_select(-1, without_t)
        phi.append((diff * weights).sum(-1))
    return torch.stack(phi, dim=-1)


def imbalance_degree(phi: Sequence[float]) -> float:
    """I = mean over unordered pairs {i, j} of |φ_i − φ_j| (0 for a single modality)."""
    pairs = list(itertools.combinations(range(len(phi)), 2))
    if not pairs:
        return 0.0
    return sum(abs(phi[i] - phi[j]) for i, j in pairs) / len(pairs)


@dataclass
class ShapleyResult:
    values: dict[str, float]  # φ per modality name
    subset_accuracy: dict[str, float]  # v(S), keyed by '+'-joined names ('∅' for the empty set)
    imbalance: float
    path: EvalPath
    samples: int

    @property
    def efficiency_gap(self) -> float:
        """Σ φ − (v(all) − v(∅)); zero up to float rounding."""
        full = self.subset_accuracy["+".join(self.values)] if self.values else 0.0
        return sum(self.values.values()) - (full - self.subset_accuracy["∅"])


def subset_name(subset: int, names: Sequence[str]) -> str:
    members = subset_members(subset, len(names))
    return "+".join(names[m] for m in members) if members else "∅"


def choose_path(method: Evaluates, model: nn.Module) -> EvalPath:
    """The cheapest path that computes exactly the masked-evaluation predictions."""
    if isinstance(model, MultimodalModel) and model.separable and method.default_evaluation():
        return "one-pass-linear" if _is_linear(model) else "one-pass-stacked"
    return "masked-passes"


def _is_linear(model: MultimodalModel) -> bool:
    return type(model.head).has_contributions()


@torch.no_grad()
def subset_correct_counts(method: Evaluates, model: nn.Module, loader: DataLoader, device: torch.device,
                          mask: Mask = "input", path: EvalPath | None = None) -> tuple[torch.Tensor, int]:
    """counts[s] = number of samples whose fused prediction is right with subset s present."""
    path = path or choose_path(method, model)
    names = method.eval_modalities(model)
    M = len(names)
    counts = torch.zeros(1 << M, dtype=torch.long)
    total = 0
    with eval_mode(model):
        for batch in loader:
            batch = move_batch(batch, device)
            labels = batch["label"]
            total += int(labels.numel())
            if path == "masked-passes":
                counts += _masked_pass_counts(method, model, batch, mask)
            else:
                features = model.encode(batch)
                absent = (model.zero_input_features(batch) if mask == "input"
                          else [torch.zeros_like(f[:1]) for f in features])
                if path == "one-pass-linear":
                    contrib, bias = model.head.affine_contributions(features)
                    absent_contrib, _ = model.head.affine_contributions(absent)
                    _, batch_counts = ops.subset_correct(contrib, absent_contrib[:, 0], bias, labels)
                    counts += batch_counts.cpu()
                else:
                    counts += _stacked_counts(model, features, absent, labels)
    return counts, total


def masked_subset_logits(method: Evaluates, model: nn.Module, batch: dict, mask: Mask = "input"
                         ) -> torch.Tensor:
    """[2^M, B, K]: the fused logits with subset s present, one masked evaluation per subset."""
    M = len(method.eval_modalities(model))
    out = []
    for s in range(1 << M):
        present = [bool(s >> m & 1) for m in range(M)]
        if mask == "input":
            logits, _ = method.eval_logits(model, batch, present, unimodal=False)
        else:
            features = model.encode(batch)
            logits = model.fuse([f if p else torch.zeros_like(f) for f, p in zip(features, present)])
        out.append(logits)
    return torch.stack(out)


def stacked_subset_logits(model: MultimodalModel, features: Sequence[torch.Tensor],
                          absent: Sequence[torch.Tensor]) -> torch.Tensor:
    """[2^M, B, K] from one encoding: the head once on the 2^M feature variants stacked, an
    absent modality's features replaced by `absent[m]` (E_m(0) for input masking)."""
    M, B = len(features), features[0].shape[0]
    variants = [torch.cat([f if s >> m & 1 else a.expand_as(f) for s in range(1 << M)])
                for m, (f, a) in enumerate(zip(features, absent))]
    return model.head(variants).view(1 << M, B, -1)


@torch.no_grad()
def subset_logits(method: Evaluates, model: nn.Module, batch: dict, mask: Mask = "input",
                  path: EvalPath | None = None) -> torch.Tensor:
    """[2^M, B, K] fused eval-mode logits of every modality subset of a batch (subset s has
    modality m present iff bit m is set): from one encoder pass when the model allows it
    (`choose_path`), else by masked passes. AGM's per-step Shapley logits use this."""
    path = path or choose_path(method, model)
    with eval_mode(model):
        if path == "masked-passes":
            return masked_subset_logits(method, model, batch, mask)
        features = model.encode(batch)
        absent = (model.zero_input_features(batch) if mask == "input"
                  else [torch.zeros_like(f[:1]) for f in features])
        return stacked_subset_logits(model, features, absent)


def _masked_pass_counts(method: Evaluates, model: nn.Module, batch: dict, mask: Mask) -> torch.Tensor:
    logits = masked_subset_logits(method, model, batch, mask)
    return (logits.argmax(-1) == batch["label"][None]).sum(1).cpu()


def _stacked_counts(model: MultimodalModel, features: list[torch.Tensor],
                    absent: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    logits = stacked_subset_logits(model, features, absent)
    return (logits.argmax(-1) == labels[None]).sum(1).cpu()


def compute_shapley(method: Evaluates, model: nn.Module, loader: DataLoader, device: torch.device,
                    mask: Mask = "input", path: EvalPath | None = None) -> ShapleyResult:
    path = path or choose_path(method, model)
    counts, total = subset_correct_counts(method, model, loader, device, mask, path)
    names = method.eval_modalities(model)
    values = (counts.double() / max(total, 1)).tolist()
    phi = shapley_from_values(values, len(names))
    return ShapleyResult(
        values=dict(zip(names, phi)),
        subset_accuracy={subset_name(s, names): v for s, v in enumerate(values)},
        imbalance=imbalance_degree(phi), path=path, samples=total)
