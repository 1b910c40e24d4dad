"""pixel_lookup: the compiled kernels against the reference (exact: a copy of table entries) for
any shape and memory layout, the reference against its definition, the argument checks; and the
pixel normalisation built on it against its element-wise definition."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbench import ops
from bbench.data.transforms import normalisation_table, normalise_elementwise, normalise_pixels
from bbench.ops import _ext, reference

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed")


def make_pixels(lead: tuple[int, ...], c: int, h: int, w: int, layout: str, seed: int,
                device: str = "cpu") -> torch.Tensor:
    """uint8 (*lead, C, H, W) in one of several memory layouts: contiguous; channels-last
    (what the resize leaves); a strided slice of a larger tensor; H and W swapped in memory."""
    g = torch.Generator().manual_seed(seed)
    if layout == "channels_last":
        x = torch.randint(0, 256, (*lead, h, w, c), generator=g, dtype=torch.uint8)
        x = x.movedim(-1, -3)
    elif layout == "sliced":
        x = torch.randint(0, 256, (*lead, c + 1, 2 * h, w + 3), generator=g, dtype=torch.uint8)
        x = x[..., 1:, ::2, 2:2 + w]
    elif layout == "transposed":
        x = torch.randint(0, 256, (*lead, c, w, h), generator=g, dtype=torch.uint8).transpose(-1, -2)
    else:
        x = torch.randint(0, 256, (*lead, c, h, w), generator=g, dtype=torch.uint8)
    assert x.shape == (*lead, c, h, w)
    return x.to(device)


def random_table(c: int, seed: int, device: str = "cpu") -> torch.Tensor:
    return torch.randn(c, 256, generator=torch.Generator().manual_seed(seed)).to(device)


dims = st.tuples(st.sampled_from([(), (1,), (3,), (2, 2)]), st.integers(1, 5), st.integers(1, 19),
                 st.integers(1, 23))  # empty sizes: test_empty_input


@SETTINGS
@given(dims=dims, layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
def test_kernel_copies_the_references_entries_in_any_layout(device, dims, layout, seed):
    lead, c, h, w = dims
    pixels = make_pixels(lead, c, h, w, layout, seed, device)
    table = random_table(c, seed, device)
    got = ops.pixel_lookup(pixels, table, backend="ext")
    expect = ops.pixel_lookup(pixels, table, backend="ref")
    assert got.dtype == torch.float32 and got.shape == pixels.shape and got.is_contiguous()
    assert torch.equal(got.cpu(), expect.cpu())


def test_reference_is_its_definition():
    pixels = make_pixels((2,), 3, 4, 5, "channels_last", 1)
    table = random_table(3, 2)
    out = reference.pixel_lookup(pixels, table)
    for idx in torch.cartesian_prod(*(torch.arange(s) for s in pixels.shape)).tolist():
        n, c, h, w = idx
        assert out[n, c, h, w] == table[c, int(pixels[n, c, h, w])]


def test_every_level_and_channel_is_looked_up(device):
    """All 256 levels in every channel, through the parallel chunks of a batch-sized input."""
    levels = torch.arange(256, dtype=torch.uint8).repeat(4 * 2 * 3 * 60)
    pixels = levels.view(4, 2, 60, 256, 3).movedim(-1, -3).to(device)  # channels-last
    table = random_table(3, 5, device)
    got = ops.pixel_lookup(pixels, table, backend="ext").cpu()
    expect = table.cpu()[torch.arange(3).view(3, 1, 1), pixels.cpu().long()]
    assert torch.equal(got, expect)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (3, 0, 4), (2, 3, 4, 0),
                                   (2, 3, 0, 5)])
def test_empty_input(device, shape):
    pixels = torch.empty(shape, dtype=torch.uint8, device=device)
    table = random_table(shape[-3], 0, device)
    out = ops.pixel_lookup(pixels, table, backend="ext")
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.equal(out.cpu(), ops.pixel_lookup(pixels, table, backend="ref").cpu())


BAD = {
    "two dims": (torch.zeros(4, 4, dtype=torch.uint8), torch.zeros(4, 256),
                 r"pixels must have shape \(\.\.\., C, H, W\), got \[4, 4\]"),
    "float pixels": (torch.zeros(3, 2, 2), torch.zeros(3, 256),
                     "pixels must be uint8, got (torch.float32|Float) of shape"),
    "table channels": (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(2, 256),
                       r"table must be float32 of shape \[C, 256\] = \[3, 256\].*shape \[2, 256\]"),
    "table dtype": (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(3, 256, dtype=torch.float64),
                    r"table must be float32.*got (torch.float64|Double) of shape"),
}


@pytest.mark.parametrize("backend", ["ref", "ext"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_quoting_shapes(backend, case, need_ext):
    if backend == "ext":
        need_ext("cpu")
    pixels, table, message = BAD[case]
    with pytest.raises(ValueError, match=message):  # the kernel names dtypes as c10 does
        ops.pixel_lookup(pixels, table, backend=backend)


@pytest.mark.ext
def test_opcheck_and_fake_shape():
    for shape, layout in [((2, 3, 5, 7), "channels_last"), ((3, 4, 4), "contiguous")]:
        pixels = make_pixels(shape[:-3], *shape[-3:], layout, 0)
        torch.library.opcheck(torch.ops.bbench.pixel_lookup.default, (pixels, random_table(shape[-3], 1)))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.bbench.pixel_lookup(torch.empty(2, 5, 3, 8, 9, dtype=torch.uint8),
                                            torch.empty(3, 256))
    assert out.shape == (2, 5, 3, 8, 9) and out.dtype == torch.float32


@SETTINGS
@given(dims=st.tuples(st.sampled_from([(), (2,), (4, 2)]), st.sampled_from([2, 3]),
                      st.integers(1, 17), st.integers(1, 17)),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
def test_normalisation_is_the_elementwise_definition(any_device, dims, layout, seed):
    """With the kernel (where the extension has one for the device) or without: the values of
    `(x / 255 - mean) / std` computed element-wise, bit for bit, contiguous."""
    lead, c, h, w = dims
    pixels = make_pixels(lead, c, h, w, layout, seed, any_device)
    got = normalise_pixels(pixels)
    assert got.is_contiguous() and got.dtype == torch.float32
    assert torch.equal(got, normalise_elementwise(pixels))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_normalisation_of_a_batch_sized_input(any_device, layout):
    """A CREMA-D-sized batch (the kernels' parallel chunks and full-width rows)."""
    pixels = make_pixels((4, 2), 3, 224, 224, layout, 9, any_device)
    assert torch.equal(normalise_pixels(pixels), normalise_elementwise(pixels))


def test_normalisation_table_holds_each_levels_value():
    table = normalisation_table(3, torch.device("cpu"))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        expect = (torch.arange(256, dtype=torch.float32) / 255.0 - mean[c]) / std[c]
        assert torch.equal(table[c], expect)


def test_normalisation_without_the_extension_is_unchanged(monkeypatch):
    pixels = make_pixels((2,), 3, 6, 7, "channels_last", 3)
    with_kernel = normalise_pixels(pixels)
    monkeypatch.setattr(_ext, "_STATE", _ext.ExtState(False, (), "disabled", None))
    assert torch.equal(normalise_pixels(pixels), with_kernel)
