"""Pure-PyTorch references of the bbench kernels, and the argument checks both paths share.

These define the semantics (docs/kernels.md); the compiled kernels must match them: exactly for
``subset_correct``, ``pixel_lookup`` and ``grad_scale_`` without noise (float32 / float64),
statistically for the noise (the generators differ: the reference uses torch's ``normal_``,
the kernels a Philox counter-based generator).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_grad_scale_args", "check_pixel_lookup_args", "check_subset_correct_args",
           "grad_scale_", "pixel_lookup", "subset_correct"]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MAX_MODALITIES = 16


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


# ---------------------------------------------------------------------------------------------
# checks (raise ValueError quoting the shapes / values)
# ---------------------------------------------------------------------------------------------

def check_grad_scale_args(grads: Sequence[torch.Tensor], group: torch.Tensor, coeff: torch.Tensor,
                          noise_std: torch.Tensor | None) -> None:
    n = len(grads)
    if not isinstance(group, torch.Tensor) or group.dim() != 1 or group.shape[0] != n:
        got = _shape(group) if isinstance(group, torch.Tensor) else type(group).__name__
        raise ValueError(f"grad_scale_: group must be an int64 tensor of shape [len(grads)] = [{n}], got {got}")
    if group.dtype != torch.int64:
        raise ValueError(f"grad_scale_: group must be int64, got {group.dtype}")
    if not isinstance(coeff, torch.Tensor) or coeff.dim() != 1 or not coeff.is_floating_point():
        got = f"{_shape(coeff)} {coeff.dtype}" if isinstance(coeff, torch.Tensor) else type(coeff).__name__
        raise ValueError(f"grad_scale_: coeff must be a floating tensor of shape [G], got {got}")
    if noise_std is not None:
        if (not isinstance(noise_std, torch.Tensor) or not noise_std.is_floating_point()
                or list(noise_std.shape) != list(coeff.shape)):
            got = (f"{_shape(noise_std)} {noise_std.dtype}" if isinstance(noise_std, torch.Tensor)
                   else type(noise_std).__name__)
            raise ValueError(f"grad_scale_: noise_std must be None or a floating tensor of the shape of "
                             f"coeff {_shape(coeff)}, got {got}")
    if n == 0:
        return
    g0 = grads[0]
    if g0.dtype not in FLOAT_DTYPES:
        raise ValueError(f"grad_scale_: grads must be float32, float64, bfloat16 or float16, got {g0.dtype}")
    for i, g in enumerate(grads):
        if g.device != g0.device or g.dtype != g0.dtype:
            raise ValueError(f"grad_scale_: all grads must share one device and dtype; grads[0] is "
                             f"{g0.dtype} on {g0.device}, grads[{i}] (shape {_shape(g)}) is {g.dtype} on {g.device}")
    if coeff.shape[0] == 0:
        raise ValueError(f"grad_scale_: coeff has shape {_shape(coeff)} but {n} grads need a group")
    if group.device.type == "cpu":  # a device tensor would need a host sync; the kernel asserts
        lo, hi = int(group.min()), int(group.max())
        if lo < 0 or hi >= coeff.shape[0]:
            raise ValueError(f"grad_scale_: group values must lie in [0, G) = [0, {coeff.shape[0]}) "
                             f"(coeff of shape {_shape(coeff)}), got values in [{lo}, {hi}]")


def check_subset_correct_args(contrib: torch.Tensor, absent: torch.Tensor, bias: torch.Tensor,
                              labels: torch.Tensor) -> tuple[int, int, int]:
    """Validate and return (M, N, K). Reads the labels (one host sync on a GPU)."""
    for name, t in (("contrib", contrib), ("absent", absent), ("bias", bias), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"subset_correct: {name} must be a tensor, got {type(t).__name__}")
    if contrib.dim() != 3:
        raise ValueError(f"subset_correct: contrib must have shape [M, N, K], got {_shape(contrib)}")
    m, n, k = contrib.shape
    if m > MAX_MODALITIES:
        raise ValueError(f"subset_correct: at most {MAX_MODALITIES} modalities (2^M subsets), "
                         f"got contrib of shape {_shape(contrib)}")
    if k < 1:
        raise ValueError(f"subset_correct: need at least one class, got contrib of shape {_shape(contrib)}")
    if list(absent.shape) != [m, k]:
        raise ValueError(f"subset_correct: absent must have shape [M, K] = [{m}, {k}] to match contrib "
                         f"{_shape(contrib)}, got {_shape(absent)}")
    if list(bias.shape) != [k]:
        raise ValueError(f"subset_correct: bias must have shape [K] = [{k}] to match contrib "
                         f"{_shape(contrib)}, got {_shape(bias)}")
    if list(labels.shape) != [n]:
        raise ValueError(f"subset_correct: labels must have shape [N] = [{n}] to match contrib "
                         f"{_shape(contrib)}, got {_shape(labels)}")
    if contrib.dtype not in FLOAT_DTYPES:
        raise ValueError(f"subset_correct: contrib must be float32, float64, bfloat16 or float16, got {contrib.dtype}")
    if absent.dtype != contrib.dtype or bias.dtype != contrib.dtype:
        raise ValueError(f"subset_correct: contrib, absent and bias must share a dtype, got "
                         f"{contrib.dtype}, {absent.dtype}, {bias.dtype}")
    if labels.dtype != torch.int64:
        raise ValueError(f"subset_correct: labels must be int64, got {labels.dtype} of shape {_shape(labels)}")
    devices = {t.device for t in (contrib, absent, bias, labels)}
    if len(devices) != 1:
        raise ValueError(f"subset_correct: all inputs must be on one device, got contrib on {contrib.device}, "
                         f"absent on {absent.device}, bias on {bias.device}, labels on {labels.device}")
    if n:
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= k:
            raise ValueError(f"subset_correct: labels must lie in [0, K) = [0, {k}), got values in "
                             f"[{lo}, {hi}] (labels of shape {_shape(labels)}, contrib of shape {_shape(contrib)})")
    return int(m), int(n), int(k)


def check_pixel_lookup_args(pixels: torch.Tensor, table: torch.Tensor) -> None:
    for name, t in (("pixels", pixels), ("table", table)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"pixel_lookup: {name} must be a tensor, got {type(t).__name__}")
    if pixels.dim() < 3:
        raise ValueError(f"pixel_lookup: pixels must have shape (..., C, H, W), got {_shape(pixels)}")
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixel_lookup: pixels must be uint8, got {pixels.dtype} of shape {_shape(pixels)}")
    c = pixels.shape[-3]
    if list(table.shape) != [c, 256] or table.dtype != torch.float32:
        raise ValueError(f"pixel_lookup: table must be float32 of shape [C, 256] = [{c}, 256] for pixels "
                         f"of shape {_shape(pixels)}, got {table.dtype} of shape {_shape(table)}")
    if table.device != pixels.device:
        raise ValueError(f"pixel_lookup: pixels are on {pixels.device}, table on {table.device}")


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------

def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Type in which subset_correct sums logits: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def subset_correct(contrib: torch.Tensor, absent: torch.Tensor, bias: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop over the 2^M subsets. Logits of subset s, in the accumulation dtype, summed left to
    right: ``bias + t_0 + t_1 + ... + t_{M-1}`` with ``t_m = contrib[m]`` if bit m of s is set
    else ``absent[m]``; prediction ``torch.argmax`` (first maximum, NaN counts as maximum)."""
    m, n, k = check_subset_correct_args(contrib, absent, bias, labels)
    return _subset_correct(contrib, absent, bias, labels, m, n, k)


def _subset_correct(contrib, absent, bias, labels, m: int, n: int, k: int):
    acc = accumulation_dtype(contrib.dtype)
    c, a, b = contrib.to(acc), absent.to(acc), bias.to(acc)
    s_count = 1 << m
    correct = torch.empty((n, s_count), dtype=torch.bool, device=contrib.device)
    for s in range(s_count):
        logits = b.expand(n, k)
        for j in range(m):
            logits = logits + (c[j] if (s >> j) & 1 else a[j])
        correct[:, s] = logits.argmax(dim=1) == labels
    return correct, correct.sum(dim=0, dtype=torch.int64)


def pixel_lookup(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``out[..., c, h, w] = table[c, pixels[..., c, h, w]]``, float32, contiguous: one gather
    per channel plane."""
    check_pixel_lookup_args(pixels, table)
    return _pixel_lookup(pixels, table)


def _pixel_lookup(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    planes = [table[c][pixels[..., c, :, :].long()] for c in range(pixels.shape[-3])]
    return torch.stack(planes, dim=-3) if planes else torch.empty(pixels.shape, dtype=torch.float32,
                                                                  device=pixels.device)


def _scalars(t: torch.Tensor) -> list[torch.Tensor]:
    return list(t.unbind()) if t.numel() else []


def grad_scale_(grads: Sequence[torch.Tensor], group: torch.Tensor, coeff: torch.Tensor,
                noise_std: torch.Tensor | None = None, seed: int | None = None) -> None:
    """``_foreach_`` reference: sigma per tensor (unbiased std before scaling, + 1e-8; 1e-8 for a
    tensor of fewer than two elements), then ``g <- coeff[j] * g + noise_std[j] * sigma * z`` with
    z from ``torch.randn`` (a ``torch.Generator`` seeded with ``seed``, else torch's default one).
    No host synchronisation on a GPU: the per-tensor scalars stay on the device."""
    grads = list(grads)
    check_grad_scale_args(grads, group, coeff, noise_std)
    _grad_scale_(grads, group, coeff, noise_std, seed)


def _grad_scale_(grads: list[torch.Tensor], group, coeff, noise_std, seed) -> None:
    if not grads:
        return
    dev = grads[0].device
    flags_on_host = group.device.type == "cpu" and noise_std is not None and noise_std.device.type == "cpu"
    if flags_on_host:  # which tensors get noise, readable without a device sync
        noisy = [i for i, f in enumerate(noise_std[group].tolist()) if f != 0]
    else:
        noisy = list(range(len(grads)))
    group = group.to(dev)
    scale = coeff.to(dev)[group]  # one gather: the coefficient of every tensor
    if noise_std is None:
        torch._foreach_mul_(grads, _scalars(scale))
        return
    if noisy:
        sel = torch.tensor(noisy, dtype=torch.int64, device=dev)
        sigma = torch.stack([grads[i].std().double() if grads[i].numel() > 1
                             else torch.zeros((), dtype=torch.float64, device=dev) for i in noisy])
        amp = noise_std.to(dev, torch.float64)[group[sel]] * (sigma + 1e-8)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=dev)
            gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
        noise = [torch.randn(grads[i].shape, generator=gen, dtype=grads[i].dtype, device=dev) for i in noisy]
        torch._foreach_mul_(noise, _scalars(amp))
    torch._foreach_mul_(grads, _scalars(scale))
    if noisy:
        torch._foreach_add_([grads[i] for i in noisy], noise)
