"""Kernels behind a stable Python API, each with a pure-PyTorch reference.

``grad_scale_`` (fused per-modality gradient scaling with optional Gaussian noise),
``subset_correct`` (correctness of the masked prediction for all 2^M modality subsets) and
``pixel_lookup`` (uint8 pixels to float32 through a per-channel table: the pixel
normalisation in one pass). Each has
``backend="auto" | "ext" | "ref"``:

- ``"ext"`` runs the compiled kernel (``torch.ops.bbench.*``, C++ on CPU, CUDA on GPU) and raises
  the stored load error when the extension is missing or has no kernel for the device;
- ``"ref"`` runs the reference in :mod:`bbench.ops.reference`;
- ``"auto"`` (default) runs the kernel when it can, else the reference, with one log line.

Semantics, numerics and build: docs/kernels.md.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from bbench.ops import _ext, reference

__all__ = ["grad_scale_", "subset_correct", "pixel_lookup", "extension_info", "has_kernels",
           "reference"]

_log = logging.getLogger(__name__)
_BACKENDS = ("auto", "ext", "ref")
_warned: set[tuple[str, str]] = set()


def extension_info() -> dict:
    """``{"loaded": bool, "backends": ["cpu", "cuda"...], "error": str | None, "path": str | None}``."""
    st = _ext.state()
    return {"loaded": st.loaded, "backends": list(st.backends), "error": st.error, "path": st.path}


def has_kernels(device: torch.device) -> bool:
    """Whether the extension is loaded with kernels for `device`'s type: what `backend="auto"`
    decides by, for callers that run something other than the reference without them."""
    st = _ext.state()
    return st.loaded and device.type in st.backends


def _use_ext(op: str, backend: str, device: torch.device) -> bool:
    if backend not in _BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(map(repr, _BACKENDS))}, got {backend!r}")
    if backend == "ref":
        return False
    if has_kernels(device):
        return True
    st = _ext.state()
    if st.loaded:
        why = f"the extension at {st.path} has no {device.type} kernel (built: {', '.join(st.backends) or 'none'})"
    else:
        why = f"the bbench extension is not available ({st.error})"
    if backend == "ext":
        raise RuntimeError(f"{op}(backend='ext'): {why}") from st.exc
    if (op, device.type) not in _warned:
        _warned.add((op, device.type))
        _log.warning("bbench.ops.%s: %s; using the PyTorch reference", op, why)
    return False


def _draw_seed() -> int:
    """One draw from torch's default CPU generator (no device synchronisation); the kernels draw
    their seed from the same generator themselves."""
    return int(torch.randint(0, 2**62, (1,)).item())


def grad_scale_(grads: Sequence[torch.Tensor], group: torch.Tensor, coeff: torch.Tensor,
                noise_std: torch.Tensor | None = None, seed: int | None = None,
                backend: str = "auto") -> None:
    """In place, for every tensor g of group j = group[i]:
    ``sigma = std(g, unbiased) + 1e-8`` (``1e-8`` for one-element tensors), computed before
    scaling, then ``g <- coeff[j] * g + noise_std[j] * N(0, sigma^2)``.

    ``grads``: tensors of one device and dtype (any shapes, empty list allowed); ``group``: int64
    ``[len(grads)]``; ``coeff``: float ``[G]``; ``noise_std``: None or float ``[G]`` (0 = no noise
    for that group). Tensors on the device are read by the kernel, so there is no host sync.
    ``seed`` None draws one from torch's default generator; a fixed seed gives identical results
    on one device whatever the thread count.
    """
    grads = list(grads)
    if grads and isinstance(grads[0], torch.Tensor):
        device = grads[0].device
    else:
        device = coeff.device if isinstance(coeff, torch.Tensor) else torch.device("cpu")
    if _use_ext("grad_scale_", backend, device):
        # the kernel validates its arguments (ValueError, same messages) and draws the seed
        torch.ops.bbench.grad_scale_(grads, group, coeff, noise_std, seed)
        return
    reference.check_grad_scale_args(grads, group, coeff, noise_std)
    if noise_std is not None and seed is None:
        seed = _draw_seed()
    reference._grad_scale_(grads, group, coeff, noise_std, seed)


def subset_correct(contrib: torch.Tensor, absent: torch.Tensor, bias: torch.Tensor,
                   labels: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """For every sample n and subset s of the M modalities (bit m of s set = modality m present):
    ``correct[n, s] = argmax_k(bias + sum_{m in s} contrib[m, n] + sum_{m not in s} absent[m]) == labels[n]``
    and ``counts[s] = correct[:, s].sum()``.

    ``contrib`` float ``[M, N, K]``, ``absent`` ``[M, K]``, ``bias`` ``[K]`` (one dtype),
    ``labels`` int64 ``[N]`` in ``[0, K)``; M <= 16. Returns ``(correct bool [N, 2^M],
    counts int64 [2^M])``. Sums run left to right (bias, then m = 0..M-1) in float32 (float64
    for float64 inputs); ties go to the lowest class index, as ``torch.argmax``.
    """
    device = contrib.device if isinstance(contrib, torch.Tensor) else torch.device("cpu")
    if _use_ext("subset_correct", backend, device):
        return torch.ops.bbench.subset_correct(contrib, absent, bias, labels)  # validates itself
    m, n, k = reference.check_subset_correct_args(contrib, absent, bias, labels)
    return reference._subset_correct(contrib, absent, bias, labels, m, n, k)


def pixel_lookup(pixels: torch.Tensor, table: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``out[..., c, h, w] = table[c, pixels[..., c, h, w]]``: float32, contiguous, the shape of
    ``pixels``.

    ``pixels`` uint8 ``(..., C, H, W)`` of any strides (channels-last included), ``table``
    float32 ``[C, 256]`` on the same device. A pure copy of table entries, so kernel and
    reference agree exactly; `bbench.data.transforms.normalise_pixels` passes the table of the
    normalised value of every level.
    """
    device = pixels.device if isinstance(pixels, torch.Tensor) else torch.device("cpu")
    if _use_ext("pixel_lookup", backend, device):
        return torch.ops.bbench.pixel_lookup(pixels, table)  # validates itself
    reference.check_pixel_lookup_args(pixels, table)
    return reference._pixel_lookup(pixels, table)
