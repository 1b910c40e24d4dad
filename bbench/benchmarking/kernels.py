"""Kernel measurements of the GPU validation script (docs/kernels.md, "GPU validation").

- `grad_scale_` on the ResNet18-AV gradient list: the gradients of every parameter of the
  model bbench builds for CREMA-D (two ResNet18 encoders, audio with 1 input channel and visual
  with 3, and the concat head; 22.35 M float32 values in 122 tensors). Without noise the kernel
  reads and writes each gradient once, so its achieved bandwidth is 2 x bytes / the
  device time of its kernels (a `queued` timing: the host's launch work is not the memory
  system's); the reference for what the memory system can do is a device-to-device copy of
  the same number of bytes (also 2 x bytes moved), timed the same way in the same run. The
  speed-ups compare whole calls, launches included: that is what a training step pays. It is
  also timed against the per-parameter Python loop of public toolkits (OGM-GE style: each
  tensor's std read on the host, then scaled, and with noise a fresh normal tensor added),
  the loop without the std read, and the `_foreach` reference.
- `subset_correct` against its reference (a loop over the 2^M subsets): identical outputs
  and the speed-up, at CREMA-D's M = 2, K = 6 and at the CPU target's M = 3, K = 309.

Every function takes the device, so the dry run executes the same code on CPU tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from bbench import ops
from bbench.benchmarking.timing import Timing, time_calls
from bbench.methods.base import RunContext
from bbench.methods.registry import build_method, reference_method
from bbench.testing.throughput import CREMAD_SIZE, StepSetting, spec_info, step_spec

# One coefficient per group (audio encoder, visual encoder, head); none is 1, so the kernel may
# skip no group and every byte counted is moved.
COEFFS = (0.9, 0.7, 0.8)
FLUSH_BYTES = 256 * 2**20  # larger than the L2 cache of any current GPU (H100/H200: 50 MB)
SUBSET_CASES = ((2, 6), (3, 309))  # (M, K): CREMA-D's pair and classes; the CPU target case


@dataclass
class GradList:
    """Gradient-shaped tensors on one device and the group (modality, or head) of each."""

    grads: list[torch.Tensor]
    group: torch.Tensor
    host_group: list[int]

    @property
    def elements(self) -> int:
        return sum(g.numel() for g in self.grads)

    @property
    def bytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.grads)


def av_gradients(device: torch.device, seed: int = 0) -> GradList:
    """N(0, 1) gradients of the CREMA-D model's parameters: encoder m in group m, head last."""
    spec = step_spec(StepSetting(reference_method()), CREMAD_SIZE, torch.device("cpu"), seed)
    ctx = RunContext(spec_info(spec), spec.model, seed, torch.device("cpu"), spec)
    model = build_method(spec.method, spec.method_params, ctx).build_model()
    groups = {id(p): i for i, m in enumerate(model.modalities) for p in model.encoders[m].parameters()}
    head = len(model.modalities)
    params = list(model.parameters())
    host_group = [groups.get(id(p), head) for p in params]
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=g).to(device) for p in params]
    return GradList(grads, torch.tensor(host_group, device=device), host_group)


def loop_with_std(grads: Sequence[torch.Tensor], groups: Sequence[int], coeffs: Sequence[float],
                  noise: bool) -> None:
    """The per-parameter loop of public toolkits (OGM-GE style): the std read on the host."""
    for g, j in zip(grads, groups):
        std = g.std().item()
        g.mul_(coeffs[j])
        if noise:
            g.add_(torch.zeros_like(g).normal_(0, std + 1e-8))


def loop_mul(grads: Sequence[torch.Tensor], groups: Sequence[int], coeffs: Sequence[float]) -> None:
    """The same loop without the std read: one launch per tensor, nothing read on the host."""
    for g, j in zip(grads, groups):
        g.mul_(coeffs[j])


def cache_flush(device: torch.device) -> Callable[[], None]:
    """Untimed set-up that evicts the GPU's L2 cache (writes a buffer larger than it), so a
    repeat does not read what the previous one left there; nothing on the CPU, whose timed
    buffers are larger than its caches anyway."""
    if device.type != "cuda":
        return lambda: None
    buffer = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    return lambda: buffer.zero_()


def gigabytes_per_second(moved_bytes: int, seconds: float) -> float:
    return moved_bytes / seconds / 1e9


def copy_timing(elements: int, dtype: torch.dtype, device: torch.device, repeats: int,
                warmup: int, flush: Callable[[], None]) -> Timing:
    """A device-to-device copy of `elements` values, its device time: the bandwidth reference."""
    src = torch.empty(elements, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    return time_calls(lambda: dst.copy_(src), device, repeats, warmup, setup=flush, queued=True)


def measure_grad_scale(grads: GradList, device: torch.device, repeats: int,
                       warmup: int) -> dict[str, object]:
    """Median times (and bandwidths of the one-pass implementations) of `grad_scale_` and the
    loops, without and with noise, next to a copy of the same bytes."""
    flush = cache_flush(device)
    moved = 2 * grads.bytes  # read once, written once
    copy = copy_timing(grads.elements, grads.grads[0].dtype, device, repeats, warmup, flush)
    base = [g.clone() for g in grads.grads]
    coeff = torch.tensor(COEFFS, device=device)
    ones = torch.ones_like(coeff)

    def reset() -> None:  # fresh gradients every repeat (repeated scaling drifts to denormals)
        torch._foreach_copy_(grads.grads, base)
        flush()

    figures: dict[str, object] = {
        "tensors": len(grads.grads), "elements": grads.elements, "bytes": grads.bytes,
        "copy": {**copy.as_dict(), "GB_per_s": gigabytes_per_second(moved, copy.median)}}
    for noise in (False, True):
        std = ones if noise else None
        impls: dict[str, Callable[[], None]] = {
            "ext": lambda: ops.grad_scale_(grads.grads, grads.group, coeff, std, seed=1,
                                           backend="ext"),
            "ref": lambda: ops.grad_scale_(grads.grads, grads.group, coeff, std, seed=1,
                                           backend="ref"),
            "loop": lambda: loop_with_std(grads.grads, grads.host_group, COEFFS, noise)}
        if not noise:
            impls["loop-mul"] = lambda: loop_mul(grads.grads, grads.host_group, COEFFS)
        timings = {name: time_calls(fn, device, repeats, warmup, setup=reset)
                   for name, fn in impls.items()}
        group: dict[str, object] = {}
        for name, timing in timings.items():
            entry: dict[str, object] = {**timing.as_dict(),
                                        "ext_speedup": timing.median / timings["ext"].median}
            if not noise and name != "loop":  # one pass over the bytes: a bandwidth applies
                kernels_only = time_calls(impls[name], device, repeats, warmup, setup=reset,
                                          queued=True)
                entry["device_median_ms"] = kernels_only.median * 1e3
                entry["GB_per_s"] = gigabytes_per_second(moved, kernels_only.median)
            group[name] = entry
        figures[f"noise={noise}"] = group
    reset()
    return figures


def subset_inputs(m: int, n: int, k: int, device: torch.device, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(contrib, absent, bias, labels): float32 N(0, 1) values, uniform labels."""
    g = torch.Generator().manual_seed(seed)
    tensors = (torch.randn(m, n, k, generator=g), torch.randn(m, k, generator=g),
               torch.randn(k, generator=g), torch.randint(0, k, (n,), generator=g))
    return tuple(t.to(device) for t in tensors)  # type: ignore[return-value]


def compare_subset_correct(device: torch.device, n: int, repeats: int, warmup: int,
                           cases: Sequence[tuple[int, int]] = SUBSET_CASES) -> list[dict[str, object]]:
    """Per (M, K): whether kernel and reference agree exactly, and their median times."""
    rows = []
    for m, k in cases:
        args = subset_inputs(m, n, k, device)
        ext = ops.subset_correct(*args, backend="ext")
        ref = ops.subset_correct(*args, backend="ref")
        identical = torch.equal(ext[0], ref[0]) and torch.equal(ext[1], ref[1])
        times: dict[str, Timing] = {
            backend: time_calls(lambda b=backend: ops.subset_correct(*args, backend=b), device,
                                repeats, warmup) for backend in ("ext", "ref")}
        rows.append({"M": m, "N": n, "K": k, "identical": identical,
                     "ext": times["ext"].as_dict(), "ref": times["ref"].as_dict(),
                     "speedup": times["ref"].median / times["ext"].median})
    return rows
