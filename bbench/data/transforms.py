"""Sample transforms: frame selection, crops, resizing, normalisation, the fit of stored audio.

One job: what a decoded sample goes through before it reaches a model -- the optional
stored-resolution resize (`fit_short_side`), the §2.0 frame-selection rule, one crop/flip per
clip, deterministic eval resizing, the pixel normalisation `move_batch` applies after a
batch's hand-over and the crop/pad of stored spectrograms -- written once for all loaders.

Training randomness of a sample comes from `numpy.random.default_rng([seed, epoch, index])`
(§0.3, `sample_rng`), so a sample is a pure function of (run seed, epoch, position in the split)
and does not depend on `num_workers` or on which samples were read before it.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from bbench import ops
from bbench.data.errors import malformed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_NORMALISATION: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    3: (IMAGENET_MEAN, IMAGENET_STD),  # RGB frames
    2: ((0.5, 0.5), (0.5, 0.5)),       # optical-flow u/v planes, to [−1, 1]
}
"""(mean, std) per channel of uint8 pixels after the division by 255, by channel count."""


def frame_indices(n: int, count: int, rng: Optional[np.random.Generator]) -> list[int]:
    """`count` frame positions out of `n` sorted frames by the §2.0 rule (rng None = eval)."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    seg = n // count
    if seg == 0:  # short clip: frames repeated, same in train and eval
        return [i * n // count for i in range(count)]
    if rng is None:
        return [i * seg + seg // 2 for i in range(count)]
    offsets = rng.integers(0, seg, size=count)
    return [i * seg + int(o) for i, o in enumerate(offsets)]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training sample: a function of (run seed, epoch, index) only."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def stack_frames(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T, C, H, W) in channels-last memory from per-frame (C, H, W) tensors (as decoded: a
    copy of their bytes, no transposition); frames of another size are resized to the first's."""
    height, width = frames[0].shape[-2:]
    same = [f if f.shape[-2:] == (height, width)
            else TF.resize(f, [height, width], antialias=True) for f in frames]
    return torch.stack([f.permute(1, 2, 0) for f in same]).permute(0, 3, 1, 2)


def fit_short_side(frame: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """uint8 (C, H, W) with its shorter side resized to `size`, aspect kept; None: unchanged.

    Applied right after decoding by the JPEG path and by `prepare --pack` alike (option
    `frame_short_side`), so a pack can store frames smaller than the originals and still give
    the very tensors the JPEG path gives.
    """
    if size is None or min(frame.shape[-2:]) == size:
        return frame
    return TF.resize(frame, size, antialias=True)


def resized_crop_box(height: int, width: int, rng: np.random.Generator,
                     scale: tuple[float, float] = (0.08, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, torchvision's algorithm with our generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=None)
def _normalisation(channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (C, 1, 1) mean and std on `device`, built once: `normalise_pixels` runs per batch."""
    if channels not in PIXEL_NORMALISATION:
        raise ValueError(f"uint8 pixels with {channels} channels: only "
                         f"{', '.join(map(str, sorted(PIXEL_NORMALISATION)))} (RGB, flow) are known")
    mean, std = PIXEL_NORMALISATION[channels]
    return (torch.tensor(mean, device=device).view(-1, 1, 1),
            torch.tensor(std, device=device).view(-1, 1, 1))


def normalise_elementwise(pixels: torch.Tensor) -> torch.Tensor:
    """The normalisation's definition: ``(pixels / 255 - mean) / std`` per channel, in float32,
    contiguous."""
    mean, std = _normalisation(int(pixels.shape[-3]), pixels.device)
    as_float = pixels.to(torch.float32, memory_format=torch.contiguous_format)
    return as_float.div_(255.0).sub_(mean).div_(std)


@functools.lru_cache(maxsize=None)
def normalisation_table(channels: int, device: torch.device) -> torch.Tensor:
    """float32 [C, 256]: `normalise_elementwise` of every uint8 level in every channel.

    Built once per (channels, device) and shared by every later normalisation: read it,
    never write to it."""
    levels = torch.arange(256, dtype=torch.uint8, device=device).expand(channels, 1, 256)
    return normalise_elementwise(levels).view(channels, 256)


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (…, C, H, W) → float32: RGB (C = 3) in ImageNet normalisation, flow planes
    (C = 2) in [−1, 1].

    Loaders hand frames over as uint8 and `data.base.move_batch` calls this after the move
    to the model's device: a quarter of float32's bytes cross the workers' shared memory and
    the host-to-device copy. Element-wise, so a batch gets the values its samples would get,
    in whatever memory layout they came (frames leave the resize channels-last); the result
    is contiguous, the layout models get unless `train.channels_last` asks for NHWC.

    With the compiled kernels it is one `ops.pixel_lookup` pass through the table of the
    element-wise result of each of the 256 levels, so the values are the element-wise ones by
    construction, 2.3–3× faster on a CPU (docs/benchmarks.md); the element-wise four passes,
    one of them a transposing conversion, run where the extension has no kernel for the
    device.
    """
    if ops.has_kernels(pixels.device):
        table = normalisation_table(int(pixels.shape[-3]), pixels.device)
        return ops.pixel_lookup(pixels, table, backend="ext")
    return normalise_elementwise(pixels)


def clip_train_crop(frames: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One RandomResizedCrop box and one flip (p 0.5) drawn per clip, applied to all T frames.

    The box is copied out contiguously, in channels-last memory, before the resize: the same
    values as `TF.resized_crop(frames, top, left, h, w, [size, size], antialias=True)`
    (pinned by `tests/data/test_pack.py` and `tests/data/test_pixels.py`), and the uint8
    resize reads channels-last input without converting it (about 2.5× faster). A pack reads
    only the box from its map (`Pack.train_crop`, the same draws and values).
    """
    box = resized_crop_box(*frames.shape[-2:], rng)
    return resize_and_flip(crop_box(frames, box), size, rng)


def crop_box(frames: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The (top, left, height, width) box of (…, C, H, W) frames, copied out in channels-last
    memory."""
    top, left, h, w = box
    return frames[..., top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)


def resize_and_flip(cropped: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """The cropped frames resized to size × size, then flipped with probability 0.5 (one draw
    from `rng`, after the box's)."""
    out = TF.resize(cropped, [size, size], antialias=True)
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out


def resize_exact(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to exactly size × size (aspect ratio not kept, as the public loaders)."""
    return TF.resize(frames, [size, size], antialias=True)


def fit_audio(array: Any, frames: int, mel_bins: int, pad_value: float, source: str,
              dataset: str, warn: Callable[[str, str], None]) -> torch.Tensor:
    """(1, frames, mel_bins) float32 from a stored (T, F) or (1, T, F) spectrogram.

    Values are used as stored (already normalised, §3.2); a different length is cropped or
    padded at the end with `pad_value`, with one warning per split.
    """
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 2 or tensor.shape[1] != mel_bins or not tensor.is_floating_point():
        raise malformed(dataset, source,
                        f"audio array has shape {tuple(tensor.shape)} and dtype {tensor.dtype}; "
                        f"expected a float (T, {mel_bins}) or (1, T, {mel_bins}) spectrogram "
                        f"(set dataset.options.mel_bins if your recipe uses another bin count)")
    tensor = tensor.to(torch.float32)
    length = int(tensor.shape[0])
    if length != frames:
        warn("audio_length", f"{dataset}: audio arrays of {length} frames (first: {source}) are "
                             f"{'cropped' if length > frames else 'padded'} to "
                             f"audio_frames={frames}")
        if length > frames:
            tensor = tensor[:frames]
        else:
            pad = torch.full((frames - length, mel_bins), float(pad_value), dtype=torch.float32)
            tensor = torch.cat([tensor, pad])
    return tensor.unsqueeze(0).contiguous()
