"""Encoders, fusion heads and the multimodal model."""
from bbench.models.encoders import ENCODERS, build_encoder
from bbench.models import backbones  # noqa: F401  (registers resnet18, vit_b16, transformer, bert)
from bbench.models.fusion import FUSIONS, FusionHead, build_fusion
from bbench.models.multimodal import MultimodalModel, apply_keep, build_multimodal_model

__all__ = ["ENCODERS", "FUSIONS", "FusionHead", "MultimodalModel", "apply_keep", "build_encoder",
           "build_fusion", "build_multimodal_model"]
