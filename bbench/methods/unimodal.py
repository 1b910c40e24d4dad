"""Unimodal (methods.md §3.2): one encoder and a Linear(d_m → K) head, trained alone.

The model is the default MultimodalModel restricted to one modality, so the encoder's
state-dict keys equal those of E_m inside the multimodal model and its weights move
between the two without renaming. Other modalities are neither read nor encoded.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bbench.config.fields import SpecError
from bbench.methods.base import Method, RunContext
from bbench.methods.facts import Family
from bbench.methods.registry import register_method
from bbench.models.multimodal import build_multimodal_model


@dataclass(frozen=True)
class UnimodalParams:
    modality: str = ""


@register_method()
class Unimodal(Method):
    name = "Unimodal"
    family = Family.REFERENCE
    Params = UnimodalParams
    per_modality = "modality"  # one run and one table row per modality of the dataset

    def __init__(self, params: UnimodalParams, ctx: RunContext) -> None:
        super().__init__(params, ctx)
        if params.modality not in ctx.info.modalities:
            raise SpecError(f"Unimodal: modality={params.modality!r} is not a modality of this run; "
                            f"choose one of {', '.join(ctx.info.modalities)}")
        self.modalities = (params.modality,)

    def build_model(self) -> nn.Module:
        return build_multimodal_model(self.ctx.info, self.ctx.model_spec,
                                      modalities=self.modalities, fusion="concat")
