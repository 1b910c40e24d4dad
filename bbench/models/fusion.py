"""Fusion heads: features of all modalities -> class logits, plus per-modality logits.

Every head takes the feature list in modality order. Additively separable (late-fusion)
heads also expose `affine_contributions`, the per-modality logit term at given features, so
that z = bias + Σ_m contribution_m exactly (linear heads, and the cosine head, whose terms
are nonlinear in h_m but still one per modality); the Shapley metric then evaluates all 2^M
modality subsets from one encoder pass (metrics.md, "One encoder pass"). Heads whose z_m
is affine in h_m also say so through `unimodal_affine`, read off a copy of their state, so
that the loop's training accuracy can evaluate many steps' copies in one batched product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from bbench.config.fields import build, param
from bbench.registry import Registry


class FusionHead(nn.Module):
    """Base class. `additive` heads satisfy Σ_m unimodal(h, m) == forward(h)."""

    additive: bool = False

    def __init__(self, dims: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.num_classes = int(num_classes)

    def unimodal(self, features: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        """Logits of modality `index` alone: by default the head with the others' features zeroed."""
        masked = [f if i == index else torch.zeros_like(f) for i, f in enumerate(features)]
        return self(masked)

    def affine_contributions(
        self, features: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(contrib [M, N, K], bias [K]) with logits = bias + Σ_m contrib[m], or None if nonlinear."""
        return None

    def unimodal_affine(self, state: Mapping[str, torch.Tensor],
                        index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W_m [..., K, d_m], b_m [..., K]) such that the head with state `state` (its
        `state_dict`, each tensor optionally stacked along leading dimensions, e.g. one copy
        per training step) has unimodal(h, m) = h_m W_m^T + b_m; None where z_m is not affine
        in h_m (the default). Tests compare it with `unimodal` for every head."""
        return None

    @classmethod
    def has_contributions(cls) -> bool:
        """Whether the head implements `affine_contributions`: one additive logit term per
        modality (Shapley's one-pass path, modality valuation and CML's removals need it)."""
        return cls.affine_contributions is not FusionHead.affine_contributions


class ConcatHead(FusionHead):
    """z = W [h_1; …; h_M] + b; z_m = W_m h_m + b/M, so Σ_m z_m = z (methods.md §1.1)."""

    additive = True

    def __init__(self, dims: Sequence[int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.fc = nn.Linear(sum(self.dims), num_classes)
        offsets = [0]
        for d in self.dims:
            offsets.append(offsets[-1] + d)
        self._offsets = offsets

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc(torch.cat(list(features), dim=1))

    def weight_block(self, index: int) -> torch.Tensor:
        return self.fc.weight[:, self._offsets[index]:self._offsets[index + 1]]

    def unimodal(self, features: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        return features[index] @ self.weight_block(index).t() + self.fc.bias / len(self.dims)

    def affine_contributions(self, features):
        contrib = torch.stack([f @ self.weight_block(i).t() for i, f in enumerate(features)])
        return contrib, self.fc.bias

    def unimodal_affine(self, state, index):
        weight = state["fc.weight"][..., self._offsets[index]:self._offsets[index + 1]]
        return weight, state["fc.bias"] / len(self.dims)


class SumHead(FusionHead):
    """z = Σ_m (W_m h_m + b_m): one linear classifier per modality, logits summed (OGM-GE's 'sum')."""

    additive = True

    def __init__(self, dims: Sequence[int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.fcs = nn.ModuleList(nn.Linear(d, num_classes) for d in self.dims)

    def forward(self, features):
        return torch.stack([fc(f) for fc, f in zip(self.fcs, features)]).sum(0)

    def unimodal(self, features, index):
        return self.fcs[index](features[index])

    def affine_contributions(self, features):
        contrib = torch.stack([fc(f) for fc, f in zip(self.fcs, features)])
        return contrib, torch.zeros_like(self.fcs[0].bias)

    def unimodal_affine(self, state, index):
        return state[f"fcs.{index}.weight"], state[f"fcs.{index}.bias"]


class SharedHead(FusionHead):
    """One classifier H: Linear(d_max → K) shared by all modalities; z_m = H(pad(h_m)), z = Σ_m z_m."""

    additive = True

    def __init__(self, dims: Sequence[int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.d_max = max(self.dims)
        self.fc = nn.Linear(self.d_max, num_classes)

    def pad(self, feature: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(feature, (0, self.d_max - feature.shape[1]))

    def forward(self, features):
        return torch.stack([self.fc(self.pad(f)) for f in features]).sum(0)

    def unimodal(self, features, index):
        return self.fc(self.pad(features[index]))

    def affine_contributions(self, features):
        contrib = torch.stack([self.pad(f) @ self.fc.weight.t() for f in features])
        return contrib, self.fc.bias * len(features)

    def unimodal_affine(self, state, index):
        # pad() appends zeros: only the first d_m columns of H meet h_m.
        return state["fc.weight"][..., :self.dims[index]], state["fc.bias"]


@dataclass(frozen=True)
class CosineOptions:
    scale: float = param(15.0, gt=0, doc="s: every per-modality logit is s times a cosine")


class CosineHead(FusionHead):
    """Scaled cosine logits per modality, summed: z_m[c] = s·⟨ĥ_m, ŵ_{m,c}⟩, z = Σ_m z_m.

    ŵ_{m,c} is row c of W's column block m, normalised (as ĥ_m) with an eps of 1e-12, so a
    zero feature vector gives zero logits. Normalising both sides bounds every z_m[c] by s,
    so no modality can dominate the fused logits through the size of its features or of its
    weights (MMCosine, methods.md §6.1). There is no bias: a bias would be the one term not
    bounded by s, and the method does not use one. The head is additively separable, so
    `affine_contributions` is exact (the per-modality logits at the given features, bias 0)
    and Shapley keeps its one-pass path.
    """

    additive = True

    def __init__(self, dims: Sequence[int], num_classes: int, options: CosineOptions) -> None:
        super().__init__(dims, num_classes)
        self.scale = options.scale
        # Same layout (and initialisation) as the concat head's weight, without the bias.
        self.fc = nn.Linear(sum(self.dims), num_classes, bias=False)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.affine_contributions(features)[0].sum(0)

    def unimodal(self, features: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        block = torch.split(self.fc.weight, self.dims, dim=1)[index]
        return self.scale * (nn.functional.normalize(features[index], dim=1, eps=1e-12)
                             @ nn.functional.normalize(block, dim=1, eps=1e-12).t())

    def affine_contributions(
        self, features: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        contrib = torch.stack([self.unimodal(features, i) for i in range(len(self.dims))])
        return contrib, self.fc.weight.new_zeros(self.num_classes)


@dataclass(frozen=True)
class FiLMOptions:
    hidden: int = param(128, ge=1)
    condition: int = param(0, ge=0, doc="index of the conditioning modality")


class FiLMHead(FusionHead):
    """Feature-wise linear modulation generalised to M modalities.

    The conditioning modality c produces (γ_m, β_m) for every other modality m, which
    modulate that modality's projection: u = Σ_{m≠c} γ_m ⊙ P_m h_m + β_m; z = W u + b.
    For M = 2 this is OGM-GE's FiLM fusion.
    """

    def __init__(self, dims: Sequence[int], num_classes: int, options: FiLMOptions) -> None:
        super().__init__(dims, num_classes)
        if len(self.dims) < 2 or options.condition >= len(self.dims):
            raise ValueError(f"fusion film: condition={options.condition} must index one of "
                             f"{len(self.dims)} modalities (and FiLM needs at least 2)")
        self.condition = options.condition
        others = [i for i in range(len(self.dims)) if i != self.condition]
        self.others = others
        self.film = nn.Linear(self.dims[self.condition], 2 * options.hidden * len(others))
        self.proj = nn.ModuleList(nn.Linear(self.dims[i], options.hidden) for i in others)
        self.fc = nn.Linear(options.hidden, num_classes)
        self.hidden = options.hidden

    def forward(self, features):
        params = self.film(features[self.condition]).view(-1, len(self.others), 2, self.hidden)
        fused = sum(params[:, j, 0] * proj(features[i]) + params[:, j, 1]
                    for j, (i, proj) in enumerate(zip(self.others, self.proj)))
        return self.fc(fused)


@dataclass(frozen=True)
class GatedOptions:
    hidden: int = param(128, ge=1)


class GatedHead(FusionHead):
    """Gated multimodal unit: u = Σ_m g_m ⊙ tanh(P_m h_m), g = softmax_m(G [h_1;…;h_M]); z = W u + b."""

    def __init__(self, dims: Sequence[int], num_classes: int, options: GatedOptions) -> None:
        super().__init__(dims, num_classes)
        self.proj = nn.ModuleList(nn.Linear(d, options.hidden) for d in self.dims)
        self.gate = nn.Linear(sum(self.dims), options.hidden * len(self.dims))
        self.fc = nn.Linear(options.hidden, num_classes)
        self.hidden = options.hidden

    def forward(self, features):
        gates = self.gate(torch.cat(list(features), 1)).view(-1, len(self.dims), self.hidden)
        gates = gates.softmax(dim=1)
        fused = sum(gates[:, i] * torch.tanh(p(f)) for i, (p, f) in enumerate(zip(self.proj, features)))
        return self.fc(fused)


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class FusionEntry:
    name: str
    make: Callable[[Sequence[int], int, Any], FusionHead]
    options: type


FUSIONS: Registry[FusionEntry] = Registry("fusion")
FUSIONS.add("concat", FusionEntry("concat", lambda d, k, o: ConcatHead(d, k), NoOptions))
FUSIONS.add("sum", FusionEntry("sum", lambda d, k, o: SumHead(d, k), NoOptions))
FUSIONS.add("shared", FusionEntry("shared", lambda d, k, o: SharedHead(d, k), NoOptions))
FUSIONS.add("film", FusionEntry("film", FiLMHead, FiLMOptions))
FUSIONS.add("gated", FusionEntry("gated", GatedHead, GatedOptions))
FUSIONS.add("cosine", FusionEntry("cosine", CosineHead, CosineOptions))


def build_fusion(name: str, dims: Sequence[int], num_classes: int,
                 options: dict[str, Any] | None = None) -> FusionHead:
    entry = FUSIONS.get(name)
    return entry.make(dims, num_classes, build(entry.options, options or {}, f"fusion {entry.name}"))
