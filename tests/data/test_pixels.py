"""Pixels travel as uint8 and `move_batch` normalises them after the hand-over.

`transforms.normalise_pixels` is the one place frames and flow planes become float32; these
tests pin its values (against the formula in float64), that a batch gets exactly what its
samples would get one by one, that `move_batch` converts pixels and nothing else, and that an
image with a channel count of no known normalisation is refused by name. Frames are kept in
the (H, W, C) memory they are decoded into, which the uint8 resize reads fastest: the
resize's values do not depend on that layout, and the normalised batch is contiguous.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bbench.data.base import model_input, move_batch
from bbench.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, normalise_pixels, resize_exact,
                                    stack_frames)

CPU = torch.device("cpu")


def _pixels(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), channels=st.sampled_from([2, 3]),
       leading=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       height=st.integers(1, 9), width=st.integers(1, 9))
def test_values_follow_the_formula(seed: int, channels: int, leading: list[int], height: int,
                                   width: int) -> None:
    pixels = _pixels(seed, (*leading, channels, height, width))
    mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5, 0.5), (0.5, 0.5)))
    mean_t = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    expected = (pixels.double() / 255.0 - mean_t) / std_t
    out = normalise_pixels(pixels)
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5), channels=st.sampled_from([2, 3]))
def test_a_batch_gets_what_its_samples_get(seed: int, batch: int, channels: int) -> None:
    """The same element-wise operations on a stack: bit-identical to sample by sample, so
    normalising after the collation changes no value the loaders gave before."""
    pixels = _pixels(seed, (batch, 2, channels, 6, 7))
    one_by_one = torch.stack([normalise_pixels(p) for p in pixels])
    assert torch.equal(normalise_pixels(pixels), one_by_one)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frames=st.integers(1, 3), channels=st.sampled_from([1, 3]),
       height=st.integers(2, 90), width=st.integers(2, 90), size=st.integers(2, 64))
def test_resize_values_do_not_depend_on_the_memory_layout(seed: int, frames: int, channels: int,
                                                           height: int, width: int,
                                                           size: int) -> None:
    """The assumption the decoded (H, W, C) layout rests on: torchvision's antialiased uint8
    resize gives the same values for channels-last and contiguous input (down and up)."""
    decoded = _pixels(seed, (frames, height, width, channels)).permute(0, 3, 1, 2)
    assert torch.equal(resize_exact(decoded, size), resize_exact(decoded.contiguous(), size))
    assert torch.equal(resize_exact(decoded[0], size), resize_exact(decoded[0].contiguous(), size))


def test_stacked_frames_keep_the_decoded_layout() -> None:
    decoded = [_pixels(k, (5, 7, 3)).permute(2, 0, 1) for k in range(3)]  # as decode_image
    stacked = stack_frames(decoded)
    assert torch.equal(stacked, torch.stack([f.contiguous() for f in decoded]))
    assert stacked.is_contiguous(memory_format=torch.channels_last)


def test_normalised_batch_is_contiguous_whatever_the_pixels_layout() -> None:
    frames = _pixels(2, (4, 2, 3, 6, 5))
    decoded = torch.stack([f.contiguous(memory_format=torch.channels_last) for f in frames])
    out = normalise_pixels(decoded)
    assert out.is_contiguous() and torch.equal(out, normalise_pixels(frames))


def test_flow_planes_span_minus_one_to_one() -> None:
    planes = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(2, 1, 2)
    assert normalise_pixels(planes).tolist() == [[[-1.0, 1.0]], [[-1.0, 1.0]]]


def test_unknown_channel_count_is_named() -> None:
    with pytest.raises(ValueError, match="uint8 pixels with 4 channels"):
        normalise_pixels(torch.zeros((4, 2, 2), dtype=torch.uint8))


def test_move_batch_converts_pixels_only() -> None:
    frames = _pixels(0, (2, 2, 3, 4, 4))
    audio = torch.randn(2, 1, 5, 8)
    batch = {"visual": frames, "audio": audio, "label": torch.tensor([1, 0]),
             "index": torch.tensor([3, 4]), "keep": torch.ones(2, 2, dtype=torch.bool),
             "id": ["a", "b"]}
    moved = move_batch(batch, CPU)
    assert torch.equal(moved["visual"], normalise_pixels(frames))
    assert moved["audio"] is audio and moved["label"] is batch["label"]
    assert moved["keep"].dtype == torch.bool and moved["id"] == ["a", "b"]
    assert batch["visual"].dtype == torch.uint8  # the loader's batch is not edited
    assert model_input(audio) is audio


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalised_on_the_device() -> None:
    frames = _pixels(1, (3, 3, 8, 8))
    moved = move_batch({"visual": frames}, torch.device("cuda"))["visual"]
    assert moved.device.type == "cuda" and moved.dtype == torch.float32
    torch.testing.assert_close(moved.cpu(), normalise_pixels(frames), rtol=0, atol=1e-6)
