"""Backend selection, load-error handling, extension_info, schema / fake registrations (opcheck)."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from bbench import ops
from bbench.ops import _ext


def test_extension_info_shape():
    info = ops.extension_info()
    assert set(info) == {"loaded", "backends", "error", "path"}
    assert isinstance(info["loaded"], bool) and isinstance(info["backends"], list)
    if info["loaded"]:
        assert "cpu" in info["backends"] and info["error"] is None and info["path"]
    else:
        assert info["backends"] == [] and info["error"]


@pytest.fixture
def broken_ext(monkeypatch):
    err = ImportError("libfoo.so: cannot open shared object file")
    monkeypatch.setattr(_ext, "_STATE", _ext.ExtState(False, (), f"ImportError: {err}", None, err))
    monkeypatch.setattr(ops, "_warned", set())


def _subset_args():
    return torch.randn(2, 5, 3), torch.randn(2, 3), torch.randn(3), torch.tensor([0, 1, 2, 0, 1])


def test_ext_backend_raises_stored_load_error(broken_ext):
    with pytest.raises(RuntimeError, match="not available.*libfoo.so: cannot open") as info:
        ops.subset_correct(*_subset_args(), backend="ext")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(RuntimeError, match="libfoo.so"):
        ops.grad_scale_([torch.zeros(2)], torch.tensor([0]), torch.tensor([1.0]), backend="ext")
    assert ops.extension_info() == {"loaded": False, "backends": [], "path": None,
                                    "error": "ImportError: libfoo.so: cannot open shared object file"}


def test_auto_falls_back_with_one_log_line(broken_ext, caplog):
    caplog.set_level(logging.WARNING, logger="bbench.ops")
    args = _subset_args()
    expect = ops.subset_correct(*args, backend="ref")
    for _ in range(3):
        got = ops.subset_correct(*args)  # auto
        assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1])
    g = [torch.ones(3)]
    ops.grad_scale_(g, torch.tensor([0]), torch.tensor([2.0]))
    ops.grad_scale_(g, torch.tensor([0]), torch.tensor([2.0]))
    assert torch.equal(g[0], torch.full((3,), 4.0))
    lines = [r for r in caplog.records if r.name == "bbench.ops"]
    assert len(lines) == 2  # one per op
    assert "using the PyTorch reference" in lines[0].getMessage()
    assert "libfoo.so" in lines[0].getMessage()


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'ext', 'ref', got 'gpu'"):
        ops.subset_correct(*_subset_args(), backend="gpu")


def test_disable_env_gives_pure_python_behaviour():
    code = ("import os; os.environ['BBENCH_DISABLE_EXT'] = '1'\n"
            "import torch; from bbench import ops\n"
            "print(ops.extension_info()['error'])\n"
            "c, n = ops.subset_correct(torch.randn(2, 4, 3), torch.randn(2, 3), torch.randn(3), torch.tensor([0, 1, 2, 0]))\n"
            "print(n.shape[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["disabled", "by", "BBENCH_DISABLE_EXT", "4"]
    assert "using the PyTorch reference" in out.stderr


def test_import_does_not_load_the_extension():
    code = "import sys, bbench.ops; print('bbench._C' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.ext
def test_ops_registered_with_honest_schema():
    schema = str(torch.ops.bbench.grad_scale_.default._schema)
    assert "Tensor(a!)[] grads" in schema and schema.endswith("-> ()")
    assert torch.ops.bbench.grad_scale_.default._schema.is_mutable
    assert not torch.ops.bbench.subset_correct.default._schema.is_mutable


@pytest.mark.ext
def test_opcheck_subset_correct():
    for m, n, k in [(1, 4, 2), (3, 7, 5), (2, 0, 3)]:
        args = (torch.randn(m, n, k), torch.randn(m, k), torch.randn(k), torch.randint(0, k, (n,)))
        torch.library.opcheck(torch.ops.bbench.subset_correct.default, args)


@pytest.mark.ext
def test_opcheck_grad_scale():
    grads = [torch.randn(5, 3), torch.randn(7)]
    torch.library.opcheck(torch.ops.bbench.grad_scale_.default,
                          (grads, torch.tensor([0, 1]), torch.tensor([0.5, 2.0]), None, None))
    torch.library.opcheck(torch.ops.bbench.grad_scale_.default,
                          (grads, torch.tensor([0, 1]), torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0]), 3))


@pytest.mark.ext
def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        c, n = torch.ops.bbench.subset_correct(torch.empty(3, 10, 4), torch.empty(3, 4), torch.empty(4),
                                               torch.empty(10, dtype=torch.int64))
    assert c.shape == (10, 8) and c.dtype == torch.bool and n.shape == (8,) and n.dtype == torch.int64


def test_has_kernels_is_what_auto_decides_by(broken_ext):
    assert not ops.has_kernels(torch.device("cpu"))


def test_has_kernels_follows_the_loaded_backends():
    info = ops.extension_info()
    assert ops.has_kernels(torch.device("cpu")) == ("cpu" in info["backends"])
