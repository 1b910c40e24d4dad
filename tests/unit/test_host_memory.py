"""Host memory reuse (engine/host_memory.py): glibc keeps freed large blocks in its heap, the
switch is undone only where it was made, a run records it, and it changes no value."""
from __future__ import annotations

import ctypes
from typing import Iterator

import pytest
import torch

import bbench
from bbench.config.specs import TrainSpec
from bbench.engine import host_memory
from bbench.engine.fast_path import FastPath

CPU = torch.device("cpu")
BIG = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): always mmapped by default
glibc_only = pytest.mark.skipif(not host_memory.available(), reason="the C library is not glibc")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def mallinfo() -> MallInfo2:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def mmapped_bytes() -> int:
    """glibc's count of bytes in blocks it serves with mmap (`mallinfo2().hblkhd`)."""
    return int(mallinfo().hblkhd)


def larger_than_the_free_heap() -> int:
    """A size no free chunk of the heap can serve (what the tests before left free there), so
    malloc must get new memory: a fresh mmap, or with reuse on, a grown heap."""
    return int(mallinfo().fordblks) + BIG


@pytest.fixture
def restore_reuse() -> Iterator[None]:
    before = host_memory.reusing()
    yield
    host_memory.set_host_memory_reuse(before)


def mmapped_by(size: int) -> int:
    """How many more bytes are mmapped while a `size`-byte tensor is alive."""
    before = mmapped_bytes()
    block = torch.empty(size, dtype=torch.uint8)
    grown = mmapped_bytes() - before
    del block
    return grown


@glibc_only
def test_with_reuse_on_a_large_block_comes_from_the_heap_and_off_from_a_fresh_mmap(restore_reuse):
    assert host_memory.set_host_memory_reuse(True) and host_memory.reusing()
    assert mmapped_by(larger_than_the_free_heap()) == 0
    assert not host_memory.set_host_memory_reuse(False) and not host_memory.reusing()
    size = larger_than_the_free_heap()
    assert mmapped_by(size) >= size


@pytest.fixture
def libc_calls(monkeypatch) -> list[tuple[str, tuple[int, ...]]]:
    """The module's C library replaced by one that records its calls; reuse starts off."""
    calls: list[tuple[str, tuple[int, ...]]] = []

    class RecordingLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append(("mallopt", (param, value)))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("malloc_trim", (pad,)))
            return 1

    monkeypatch.setattr(host_memory, "_glibc", RecordingLibc)
    monkeypatch.setattr(host_memory, "_reusing", False)
    return calls


def test_switching_off_undoes_only_what_this_module_switched_on(libc_calls):
    calls = libc_calls
    assert not host_memory.set_host_memory_reuse(False) and calls == []  # glibc's own state kept
    assert host_memory.set_host_memory_reuse(True)
    assert calls == [("mallopt", (host_memory.M_MMAP_MAX, 0)),
                     ("mallopt", (host_memory.M_TRIM_THRESHOLD, -1))]
    assert host_memory.set_host_memory_reuse(True) and len(calls) == 2  # once
    assert not host_memory.set_host_memory_reuse(False)
    assert calls[2:] == [("mallopt", (host_memory.M_MMAP_MAX, 65536)),
                         ("mallopt", (host_memory.M_TRIM_THRESHOLD, 128 * 1024)),
                         ("malloc_trim", (0,))]


def test_without_glibc_reuse_is_unavailable_and_the_fast_path_says_off(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert not host_memory.available() and not host_memory.set_host_memory_reuse(True)
    assert not FastPath.for_spec(TrainSpec(), CPU).reuse_host_memory


@glibc_only
def test_the_fast_path_takes_the_setting_and_applies_it(restore_reuse):
    assert FastPath.for_spec(TrainSpec(), CPU).reuse_host_memory  # on by default
    off = FastPath.for_spec(TrainSpec(reuse_host_memory=False), CPU)
    assert not off.reuse_host_memory and not off.describe()["reuse_host_memory"]
    FastPath.for_spec(TrainSpec(), CPU).apply_process_settings()
    assert host_memory.reusing()
    off.apply_process_settings()
    assert not host_memory.reusing()


@glibc_only
def test_runs_with_and_without_reuse_train_to_the_same_weights_bit_for_bit(tmp_path, restore_reuse):
    kwargs = {"epochs": 2, "progress": False, "batch_size": 16,
              "dataset.options": {"subsample_per_class": 10}}
    on = bbench.run("OGM", "mfeat", output_root=str(tmp_path / "on"), **kwargs)
    off = bbench.run("OGM", "mfeat", output_root=str(tmp_path / "off"),
                     **{**kwargs, "train.reuse_host_memory": False})
    assert on.environment["fast_path"]["reuse_host_memory"] is True
    assert off.environment["fast_path"]["reuse_host_memory"] is False
    a = torch.load(on.run_dir / "best_model.pt")
    b = torch.load(off.run_dir / "best_model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert on.metrics["acc"] == off.metrics["acc"]


def resident_bytes() -> int:
    """This process's resident set (Linux `/proc/self/statm`, second field, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * ctypes.CDLL(None).getpagesize()


@glibc_only
@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "getpagesize"), reason="no getpagesize")
def test_released_free_pages_leave_the_resident_set(restore_reuse):
    """What a worker forked after a JPEG pass would otherwise inherit: free, written heap
    pages. `malloc_trim(0)` hands back whole free pages wherever they lie in the heap, at its
    top or below live blocks, so the resident set shrinks by at least the freed block's new
    part, and live memory keeps its values."""
    host_memory.set_host_memory_reuse(True)
    block = torch.ones(larger_than_the_free_heap(), dtype=torch.uint8)  # written: resident
    above = torch.ones(1024, dtype=torch.uint8)
    del block
    held = resident_bytes()
    host_memory.release_free_pages()
    assert held - resident_bytes() >= BIG  # at least the part no earlier free chunk held
    assert torch.equal(above, torch.ones(1024, dtype=torch.uint8))  # live memory untouched


def test_free_pages_are_released_only_where_reuse_keeps_them(monkeypatch, libc_calls):
    host_memory.release_free_pages()
    assert libc_calls == []  # glibc trims on its own when reuse is off
    monkeypatch.setattr(host_memory, "_reusing", True)
    host_memory.release_free_pages()
    assert libc_calls == [("malloc_trim", (0,))]
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    host_memory.release_free_pages()  # not glibc: nothing to do, no error
