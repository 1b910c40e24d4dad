"""Host memory reuse: glibc's malloc keeps freed large blocks instead of unmapping them.

Why: glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh
`mmap` and gives it back with `munmap` on free, so a CPU training step page-faults its large
activations and gradients anew every step, and so does every normalised frame batch (a
CREMA-D batch of 32 clips is 38 MB of float32: about 9 400 page faults, two thirds of the
normalisation's time). With mmap and heap trimming off, freed blocks go back to malloc's free
lists and the next step reuses pages that are already mapped: on the 2-core CPU of
docs/benchmarks.md a ResNet18-AV training step runs about 20 % faster and a batch's
normalisation 2.5× faster, for a peak resident size about 17 % higher (the heap keeps its
high-water mark). No operation changes, only where its buffers live, so the values are the
same (`tests/unit/test_host_memory.py` trains twice and compares the weights bit for bit).
jemalloc or tcmalloc preloaded with LD_PRELOAD do the same for a whole process, but cannot be
switched on from inside a running one; `mallopt` can.

Process-wide: the setting holds for the whole process and for DataLoader workers forked after
it. A worker forked from a heap holding many free pages inherits them, and its allocations
land in them: every first write to one is a copy-on-write page copy, which made a pass over
a pack with 2 new workers 2–3× slower after a JPEG pass had left 0.9 GB of free heap behind
(fragmented by the batches' hand-over). `release_free_pages` before the workers start hands
those pages back (`malloc_trim`), so the workers' first writes are cheap zero-filled faults.
Switching it off again restores glibc's default limits (65 536 mmaps, trimming above
128 KiB) and hands the kept free pages back (`malloc_trim`; a large block is mmapped again
once no free chunk of the heap fits it), only where this module switched it on, so a process
it never touched keeps glibc's adaptive thresholds. Elsewhere than on glibc (macOS, musl) it
is unavailable and reported so.
"""
from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # mallopt parameters of glibc's malloc.h
M_MMAP_MAX = -4
NEVER_TRIM = -1  # "setting M_TRIM_THRESHOLD to -1 disables trimming completely" (mallopt(3))
GLIBC_DEFAULT_MMAP_MAX = 65536
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024

_reusing = False  # whether this module switched reuse on in this process


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library with `mallopt` and `malloc_trim` typed, or None where it is not glibc."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def available() -> bool:
    """Whether host memory reuse can be switched on here (the C library is glibc)."""
    return _glibc() is not None


def reusing() -> bool:
    """Whether reuse is on in this process."""
    return _reusing


def set_host_memory_reuse(on: bool) -> bool:
    """Switch reuse on or off for this process; returns whether it is on afterwards."""
    global _reusing
    libc = _glibc()
    if libc is None:
        return False
    if on and not _reusing:
        no_mmap = libc.mallopt(M_MMAP_MAX, 0)
        no_trim = libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
        _reusing = bool(no_mmap and no_trim)  # mallopt returns 1 on success
    elif not on and _reusing:
        libc.mallopt(M_MMAP_MAX, GLIBC_DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)  # the kept free pages go back to the system
        _reusing = False
    return _reusing


def release_free_pages() -> None:
    """Hand the heap's free pages back to the system (`malloc_trim(0)`; it also releases whole
    free pages inside the heap, not only at its top) when reuse is on, where free pages pile
    up: before DataLoader workers are forked, so that they do not inherit them."""
    libc = _glibc()
    if libc is not None and _reusing:
        libc.malloc_trim(0)
