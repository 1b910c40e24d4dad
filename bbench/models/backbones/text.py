"""`bert`: a pretrained BERT (transformers `BertModel`) read from a local directory.

Input (B, 2, L) int64: row 0 the WordPiece input ids, row 1 the attention mask (1 = token,
0 = padding; padding never influences the output). The pooled output (tanh of a linear map
of the [CLS] state, 768-d for BERT-base) goes through dropout (training only) and a linear
projection to `out_dim` (1024 by default). Nothing is ever downloaded: `model_path` must be
a directory holding `config.json` and the weights (`model.safetensors` or `pytorch_model.bin`),
e.g. a saved `bert-base-uncased`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bbench.config.fields import param
from bbench.models.staged import StagedEncoder
from bbench.models.encoders import ENCODERS, EncoderEntry


@dataclass(frozen=True)
class BertOptions:
    model_path: str | None = param(None, doc="local directory with config.json and the weights "
                                             "of a BERT checkpoint (bert-base-uncased)")
    out_dim: int = param(1024, ge=1, doc="width of the projection of the pooled output")
    dropout: float = param(0.5, ge=0, lt=1, doc="dropout on the pooled output (training only; "
                                                "the public encoder uses 0.5)")
    freeze: bool = param(False, doc="keep the BERT weights fixed (only the projection trains)")


def load_bert(model_path: str | None) -> nn.Module:
    """`BertModel.from_pretrained(model_path)` from local files only, with clear errors."""
    if not model_path:
        raise ValueError("encoder bert: model_path is not set; give a local directory with "
                         "config.json and the weights of a BERT checkpoint (e.g. a saved "
                         "bert-base-uncased) — nothing is downloaded")
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"encoder bert: model_path {str(path)!r} is not a directory "
                                "(expected config.json and model.safetensors / pytorch_model.bin)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"encoder bert: {str(path)!r} has no config.json")
    try:
        from transformers import BertModel
    except ImportError as err:
        raise RuntimeError("encoder bert needs the `transformers` package "
                           f"(pip install transformers): {err}") from None
    try:
        model = BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=True)
    except Exception as err:  # noqa: BLE001 - any load failure gets the path and the cause
        raise ValueError(f"encoder bert: could not load a BertModel from {str(path)!r} "
                         f"({type(err).__name__}: {err})") from None
    return model


class _PooledBert(nn.Module):
    """(B, 2, L) ids + mask → BERT pooled output (B, hidden)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].long()
        return self.bert(input_ids=ids, attention_mask=mask).pooler_output


class BertEncoder(StagedEncoder):
    """stages = bert (pooled output), dropout, proj."""

    def __init__(self, input_shape: tuple[int, ...], options: BertOptions) -> None:
        super().__init__()
        if len(input_shape) != 2 or input_shape[0] != 2:
            raise ValueError(f"encoder bert: needs per-sample token arrays (2, L) — row 0 input "
                             f"ids, row 1 attention mask — got shape {tuple(input_shape)}")
        bert = load_bert(options.model_path)
        limit = getattr(bert.config, "max_position_embeddings", input_shape[1])
        if input_shape[1] > limit:
            raise ValueError(f"encoder bert: {input_shape[1]} tokens per sample exceed the "
                             f"model's max_position_embeddings={limit}")
        if options.freeze:
            bert.requires_grad_(False)
        hidden = int(bert.config.hidden_size)
        self.stages = nn.Sequential(OrderedDict(
            bert=_PooledBert(bert), dropout=nn.Dropout(options.dropout),
            proj=nn.Linear(hidden, options.out_dim)))
        self.out_dim = options.out_dim

    @property
    def fusion_points(self) -> tuple[int, ...]:
        """After the pooled BERT output (B, hidden): the BERT layers run inside one stage,
        and dropout and the projection are not blocks."""
        return (0,)

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(f"encoder bert: expected a batch (B, 2, L) of ids and mask, "
                             f"got {tuple(x.shape)}")
        return x, None


def _make(input_shape: tuple[int, ...], options: BertOptions) -> nn.Module:
    return BertEncoder(input_shape, options)


ENCODERS.add("bert", EncoderEntry(
    "bert", _make, BertOptions,
    "local pretrained BERT (ids + attention mask) → pooled 768 → linear out_dim (1024)"))
