"""Fixtures and markers of the kernel tests.

Kernel-vs-reference tests need the compiled extension: they skip when it is not built, unless
BBENCH_REQUIRE_EXT=1 (CI sets it after building), where a missing extension fails them instead.
Mark such a test ``@pytest.mark.ext`` (CPU kernels), take the ``device`` fixture (CPU and CUDA
kernels, CUDA skipped cleanly without a GPU), or call the ``need_ext`` fixture's function.
"""
from __future__ import annotations

import os

import pytest
import torch

from bbench import ops

REQUIRE_EXT = os.environ.get("BBENCH_REQUIRE_EXT", "").strip() not in ("", "0")


def _need_ext(device: str = "cpu") -> None:
    """Skip (or fail under BBENCH_REQUIRE_EXT=1) when the extension has no kernel for device."""
    info = ops.extension_info()
    if device in info["backends"]:
        return
    msg = (f"bbench extension has no {device} kernel (loaded={info['loaded']}, "
           f"backends={info['backends']}, error={info['error']})")
    if REQUIRE_EXT and (device == "cpu" or torch.cuda.is_available()):
        pytest.fail(msg)
    pytest.skip(msg)


def pytest_configure(config):
    config.addinivalue_line("markers", "ext: needs the compiled CPU kernels of bbench.ops "
                                       "(skipped without them, failed under BBENCH_REQUIRE_EXT=1)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("ext") is not None:
        _need_ext("cpu")


@pytest.fixture
def need_ext():
    return _need_ext


def _device_param(name: str):
    marks = []
    if name == "cuda":
        marks = [pytest.mark.cuda,
                 pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
    return pytest.param(name, marks=marks, id=name)


DEVICES = [_device_param("cpu"), _device_param("cuda")]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """A device whose kernels the extension has (CUDA skipped without a GPU)."""
    _need_ext(request.param)
    return request.param


@pytest.fixture(params=DEVICES)
def any_device(request) -> str:
    """A device, whether or not the extension has a kernel for it (reference-only tests)."""
    return request.param
