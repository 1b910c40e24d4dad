"""The multimodal model: one encoder per modality, a fusion head, and the two maskings.

Input masking (an absent modality's raw input replaced by zeros before its encoder) is
what the Shapley imbalance metric uses; feature masking (h_m ⊙ keep[:, m] after the
encoder) is what modality valuation's copies use (methods.md §1.2).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from bbench.config.specs import ModelSpec
from bbench.data.base import Batch, DataInfo, check_modality_names
from bbench.models.encoders import build_encoder
from bbench.models.fusion import FusionHead, build_fusion

class MultimodalModel(nn.Module):
    """encoders[m] → h_m → head([h_1 … h_M]) → z. Encoders are registered before the head."""

    separable: bool = True
    """Each h_m depends on x_m alone and z = head(h): a subset's input-masked prediction can be
    formed from one encoding pass (Shapley's one-pass paths). A model with cross-modal blocks
    between encoder stages (MMTM blocks) sets this False, and evaluation masks by passes."""

    def __init__(self, modalities: Sequence[str], encoders: Mapping[str, nn.Module],
                 head: FusionHead) -> None:
        super().__init__()
        check_modality_names(modalities)
        self.modalities = tuple(modalities)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.head = head

    # -- encoding -------------------------------------------------------------------------
    def encode(self, batch: Batch, present: Sequence[bool] | None = None) -> list[torch.Tensor]:
        """h_m for every modality; modalities with present[m] False get a zero raw input."""
        features = []
        for i, m in enumerate(self.modalities):
            x = batch[m]
            if present is not None and not present[i]:
                x = torch.zeros_like(x)
            features.append(self.encoders[m](x))
        return features

    @torch.no_grad()
    def zero_input_features(self, batch: Batch) -> list[torch.Tensor]:
        """c_m = E_m(0) for one zero sample shaped like the batch's inputs ([1, d_m] each)."""
        return [self.encoders[m](torch.zeros_like(batch[m][:1])) for m in self.modalities]

    # -- fusion ---------------------------------------------------------------------------
    def fuse(self, features: Sequence[torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(apply_keep(features, keep))

    def forward(self, batch: Batch, present: Sequence[bool] | None = None) -> torch.Tensor:
        return self.fuse(self.encode(batch, present), batch.get("keep"))

    def unimodal_logits(self, features: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        return self.head.unimodal(features, index)


def apply_keep(features: Sequence[torch.Tensor], keep: torch.Tensor | None) -> list[torch.Tensor]:
    """Feature masking: h_m ← h_m ⊙ keep[:, m] (no-op without a keep mask)."""
    if keep is None:
        return list(features)
    return [f * keep[:, i].to(f.dtype).unsqueeze(1) for i, f in enumerate(features)]


def build_multimodal_model(info: DataInfo, spec: ModelSpec,
                           modalities: Sequence[str] | None = None,
                           fusion: str | None = None) -> MultimodalModel:
    """The default model of a run (or of a subset of its modalities, e.g. Unimodal)."""
    modalities = tuple(modalities or info.modalities)
    encoders = {m: build_encoder(spec.encoder_for(m), info.input_shapes[m], m) for m in modalities}
    head = build_fusion(fusion or spec.fusion, [encoders[m].out_dim for m in modalities],
                        info.num_classes, spec.fusion_options if fusion is None else {})
    return MultimodalModel(modalities, encoders, head)
