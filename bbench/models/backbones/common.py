"""What the backbone encoders share: input layouts, time pooling, checkpoints.

Every backbone is a `StagedEncoder` (bbench/models/staged.py), like the MLP encoder.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


# -- inputs: single images / spectrograms (C, H, W) or clips (T, C, H, W) -------------------
def image_layout(name: str, input_shape: tuple[int, ...], in_channels: int | None) -> tuple[bool, int]:
    """(is_clip, channels) for a per-sample shape (C, H, W) or (T, C, H, W).

    `in_channels` None means "read it from the shape"; otherwise it must agree with the shape.
    """
    if len(input_shape) == 3:
        clip, channels = False, input_shape[0]
        what = f"an image or spectrogram (C, H, W) = {input_shape}"
    elif len(input_shape) == 4:
        clip, channels = True, input_shape[1]
        what = f"a clip of frames (T, C, H, W) = {input_shape}"
    else:
        raise ValueError(
            f"encoder {name}: needs per-sample inputs shaped (C, H, W) — e.g. an audio spectrogram "
            f"(1, T, 128) — or (T, C, H, W) — a clip of frames; got shape {tuple(input_shape)}")
    if in_channels is not None and in_channels != channels:
        raise ValueError(f"encoder {name}: in_channels={in_channels} but the input is {what} with "
                         f"{channels} channel(s); set in_channels={channels} or leave it unset")
    return clip, channels


def fold_time(name: str, x: torch.Tensor, clip: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, T, C, H, W) → (B·T, C, H, W) for clips; (B, C, H, W) passes unchanged (T = 1)."""
    want = 5 if clip else 4
    if x.dim() != want:
        kind = "(B, T, C, H, W)" if clip else "(B, C, H, W)"
        raise ValueError(f"encoder {name}: expected a batch shaped {kind}, got {tuple(x.shape)}")
    if clip:
        b, t = x.shape[:2]
        return x.reshape(b * t, *x.shape[2:]), (b, t)
    return x, (x.shape[0], 1)

def pool_time(h: torch.Tensor, bt: tuple[int, int]) -> torch.Tensor:
    """(B·T, D) per-frame features → (B, D), the mean over the T frames of each clip."""
    b, t = bt
    return h.reshape(b, t, -1).mean(dim=1) if t > 1 else h.reshape(b, -1)


# -- pretrained checkpoints --------------------------------------------------------------
class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the encoder (missing, unexpected or mis-shaped keys)."""


def read_state_dict(path: str | os.PathLike, owner: str) -> dict[str, torch.Tensor]:
    """Tensors of a local .pth/.pt state dict (`weights_only` load; nothing is downloaded).

    Accepts a plain state dict or one wrapped as {"state_dict": ...} / {"model": ...}, and
    strips a DataParallel `module.` prefix.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"encoder {owner}: pretrained_path {str(file)!r} does not exist "
                                "(weights are never downloaded; give a local .pth state dict)")
    try:
        state: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointMismatchError(
            f"encoder {owner}: could not read pretrained_path {str(file)!r} as a torch state dict "
            f"({type(err).__name__}: {err})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"encoder {owner}: {str(file)!r} is not a state dict "
                                      "(a mapping of parameter names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], file: str | os.PathLike,
                 owner: str, ignore: Iterable[str] = ()) -> None:
    """Load `state` into `module` strictly, or raise an error naming the file and every problem.

    Keys starting with a prefix in `ignore` (e.g. a classifier head the encoder drops) are
    skipped on both sides.
    """
    ignore = tuple(ignore)
    keep: Callable[[str], bool] = lambda k: not (ignore and k.startswith(ignore))
    own = {k: v for k, v in module.state_dict().items() if keep(k)}
    given = {k: v for k, v in state.items() if keep(k)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(given[k].shape)} vs encoder {tuple(own[k].shape)}"
                    for k in set(own) & set(given) if given[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listing(shapes)}")
        raise CheckpointMismatchError(f"encoder {owner}: pretrained_path {str(file)!r} does not fit "
                                      f"the encoder; " + "; ".join(parts))
    module.load_state_dict({**module.state_dict(), **given}, strict=True)
