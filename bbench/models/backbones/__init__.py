"""Backbone encoders (ResNet18, ViT-B/16, Transformer, BERT), registered in ENCODERS on import.

Every backbone follows the encoder contract of `bbench.models.encoders` (`out_dim`, `stages`)
and the staged split of `bbench.models.staged.StagedEncoder`: forward(x) = exit(stages(enter(x))).
"""
from bbench.models.backbones import resnet, sequence, text, vit
from bbench.models.backbones.common import CheckpointMismatchError
from bbench.models.staged import StagedEncoder

__all__ = ["CheckpointMismatchError", "StagedEncoder", "resnet", "sequence", "text", "vit"]
