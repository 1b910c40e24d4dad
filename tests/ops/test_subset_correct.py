"""subset_correct: the compiled kernel against the reference (exact), and the reference against
first principles (one masked prediction per subset, torch.argmax)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bbench import ops
from bbench.ops import reference

SETTINGS = settings(max_examples=60, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def make_inputs(m: int, n: int, k: int, mode: str, dtype: torch.dtype, seed: int,
                device: str = "cpu"):
    """Inputs in one of several value regimes:
    normal   - N(0, 1) values;
    ties     - small integers, so that many logits tie exactly (argmax must take the first);
    spread   - magnitudes from 1e-30 to 1e30 mixed, where rounding order matters;
    special  - normal values with some +-inf / NaN / signed zeros sprinkled in."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        if mode == "ties":
            return torch.randint(-2, 3, shape, generator=g).to(torch.float64)
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if mode == "spread":
            x = x * torch.pow(10.0, torch.randint(-30, 31, shape, generator=g).to(torch.float64))
        if mode == "special":
            r = torch.rand(shape, generator=g)
            x = torch.where(r < 0.03, torch.tensor(float("inf"), dtype=torch.float64), x)
            x = torch.where((r >= 0.03) & (r < 0.06), torch.tensor(float("-inf"), dtype=torch.float64), x)
            x = torch.where((r >= 0.06) & (r < 0.08), torch.tensor(float("nan"), dtype=torch.float64), x)
            x = torch.where((r >= 0.08) & (r < 0.12), torch.tensor(-0.0, dtype=torch.float64), x)
            x = torch.where((r >= 0.12) & (r < 0.16), torch.tensor(0.0, dtype=torch.float64), x)
        return x

    contrib = draw(m, n, k).to(dtype)
    absent = draw(m, k).to(dtype)
    bias = draw(k).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    return [t.to(device) for t in (contrib, absent, bias, labels)]


def first_principles(contrib, absent, bias, labels):
    """One masked prediction per subset, written independently of the reference."""
    m, n, k = contrib.shape
    acc = torch.float64 if contrib.dtype == torch.float64 else torch.float32
    cols = []
    for s in range(1 << m):
        z = bias.to(acc).expand(n, k)
        for j in range(m):
            z = z + (contrib[j].to(acc) if s & (1 << j) else absent[j].to(acc).expand(n, k))
        cols.append(torch.argmax(z, dim=1) == labels)
    correct = torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.bool)
    return correct, correct.sum(0)


def assert_same(a, b):
    assert a[0].dtype == torch.bool and a[1].dtype == torch.int64
    assert a[0].shape == b[0].shape and a[1].shape == b[1].shape
    assert torch.equal(a[0].cpu(), b[0].cpu()), "correct differs"
    assert torch.equal(a[1].cpu(), b[1].cpu()), "counts differ"


shapes = st.tuples(st.integers(1, 8), st.sampled_from([0, 1, 2, 3, 17, 64]), st.integers(2, 400))
modes = st.sampled_from(["normal", "ties", "spread", "special"])


@pytest.mark.ext
@SETTINGS
@given(shape=shapes, mode=modes, dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_ext_matches_reference(shape, mode, dtype, seed):
    m, n, k = shape
    assume(n * k * (1 << m) <= 2_000_000)
    args = make_inputs(m, n, k, mode, dtype, seed)
    assert_same(ops.subset_correct(*args, backend="ext"), ops.subset_correct(*args, backend="ref"))


@pytest.mark.ext
@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(2, 50)), mode=modes,
       dtype=st.sampled_from([torch.bfloat16, torch.float16]), seed=st.integers(0, 2**31 - 1))
def test_ext_matches_reference_reduced_precision(shape, mode, dtype, seed):
    args = make_inputs(*shape, mode if mode != "spread" else "normal", dtype, seed)
    assert_same(ops.subset_correct(*args, backend="ext"), ops.subset_correct(*args, backend="ref"))


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(1, 5), st.integers(0, 20), st.integers(2, 30)), mode=modes,
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_first_principles(shape, mode, dtype, seed):
    args = make_inputs(*shape, mode, dtype, seed)
    assert_same(reference.subset_correct(*args), first_principles(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constructed_ties_go_to_lowest_class(device, dtype):
    # Every subset's logits tie between classes 1 and 3 (and 0 and 2 lower); argmax must be 1.
    m, n, k = 3, 5, 4
    contrib = torch.zeros(m, n, k, dtype=dtype)
    contrib[:, :, 1] = 1.0
    contrib[:, :, 3] = 1.0
    absent = torch.zeros(m, k, dtype=dtype)
    absent[:, 1] = absent[:, 3] = 1.0
    bias = torch.tensor([0.5, 0.25, 0.5, 0.25], dtype=dtype)
    labels = torch.tensor([1, 3, 0, 2, 1])
    args = [t.to(device) for t in (contrib, absent, bias, labels)]
    correct, counts = ops.subset_correct(*args, backend="ext")
    expect = torch.tensor([True, False, False, False, True]).unsqueeze(1).expand(n, 1 << m)
    assert torch.equal(correct.cpu(), expect)
    assert counts.tolist() == [2] * (1 << m)
    assert_same((correct, counts), ops.subset_correct(*args, backend="ref"))


@pytest.mark.ext
def test_rounding_order_is_the_references():
    # 1e8 + 1 - 1e8 in float32 depends on the order of the adds: the kernel must follow the
    # reference's left-to-right order (bias, then modality 0, 1, ...), not an incremental update.
    contrib = torch.tensor([[[0.0, 1.0]], [[0.0, -1e8]]], dtype=torch.float32)
    absent = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float32)
    bias = torch.tensor([0.0, 1e8], dtype=torch.float32)
    labels = torch.tensor([0])
    ext = ops.subset_correct(contrib, absent, bias, labels, backend="ext")
    assert_same(ext, ops.subset_correct(contrib, absent, bias, labels, backend="ref"))
    assert_same(ext, first_principles(contrib, absent, bias, labels))
    # subset {0, 1}: (1e8 + 1) - 1e8 = 0 in float32 -> tie at 0 -> class 0 is the argmax
    assert bool(ext[0][0, 3])


def test_non_contiguous_inputs(device):
    contrib, absent, bias, labels = make_inputs(3, 40, 23, "ties", torch.float32, 7, device)
    c2 = contrib.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    a2 = absent.t().contiguous().t()
    b2 = torch.stack([bias, bias], 1)[:, 0]
    l2 = torch.stack([labels, labels], 1)[:, 1]
    assert not c2.is_contiguous() and not a2.is_contiguous() and not b2.is_contiguous()
    assert_same(ops.subset_correct(c2, a2, b2, l2, backend="ext"),
                ops.subset_correct(contrib, absent, bias, labels, backend="ref"))


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_n(device, n):
    args = make_inputs(2, n, 5, "normal", torch.float32, 3, device)
    out = ops.subset_correct(*args, backend="ext")
    assert out[0].shape == (n, 4) and out[1].shape == (4,)
    assert_same(out, ops.subset_correct(*args, backend="ref"))


@pytest.mark.ext
def test_many_modalities():
    args = make_inputs(12, 3, 4, "ties", torch.float32, 11)
    assert_same(ops.subset_correct(*args, backend="ext"), first_principles(*args))


@pytest.mark.ext
def test_larger_case_parallel_chunks():
    # Enough samples that at::parallel_for splits them across threads.
    args = make_inputs(3, 3000, 31, "ties", torch.float32, 5)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = ops.subset_correct(*args, backend="ext")
    finally:
        torch.set_num_threads(prev)
    assert_same(out, ops.subset_correct(*args, backend="ref"))


def test_counts_are_column_sums(device):
    args = make_inputs(4, 200, 9, "normal", torch.float32, 1, device)
    correct, counts = ops.subset_correct(*args, backend="ext")
    assert torch.equal(counts.cpu(), correct.cpu().sum(0))
    assert correct.device.type == device and counts.device.type == device


# ---- errors -----------------------------------------------------------------------------------

def _good():
    return make_inputs(2, 4, 3, "normal", torch.float32, 0)


BAD = {
    "contrib_2d": (lambda c, a, b, y: (c[0], a, b, y), r"contrib must have shape \[M, N, K\], got \[4, 3\]"),
    "absent_shape": (lambda c, a, b, y: (c, a[:, :2], b, y), r"absent must have shape \[M, K\] = \[2, 3\].*got \[2, 2\]"),
    "bias_shape": (lambda c, a, b, y: (c, a, b[:2], y), r"bias must have shape \[K\] = \[3\].*got \[2\]"),
    "labels_shape": (lambda c, a, b, y: (c, a, b, y[:3]), r"labels must have shape \[N\] = \[4\].*got \[3\]"),
    "labels_dtype": (lambda c, a, b, y: (c, a, b, y.int()), r"labels must be int64, got (torch\.int32|Int)"),
    "labels_high": (lambda c, a, b, y: (c, a, b, torch.tensor([0, 1, 3, 2])), r"labels must lie in \[0, K\) = \[0, 3\), got values in \[0, 3\]"),
    "labels_negative": (lambda c, a, b, y: (c, a, b, torch.tensor([0, -1, 2, 2])), r"got values in \[-1, 2\]"),
    "dtype_mix": (lambda c, a, b, y: (c, a.double(), b, y), r"must share a dtype"),
    "int_contrib": (lambda c, a, b, y: (c.long(), a.long(), b.long(), y), r"must be float32, float64, bfloat16 or float16"),
}


@pytest.mark.parametrize("backend", ["ref", "ext"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_quoting_shapes(backend, case, need_ext):
    if backend == "ext":
        need_ext("cpu")
    make, pattern = BAD[case]
    with pytest.raises(ValueError, match=pattern):
        ops.subset_correct(*make(*_good()), backend=backend)


def test_too_many_modalities():
    contrib = torch.zeros(17, 1, 2)
    with pytest.raises(ValueError, match=r"at most 16 modalities.*\[17, 1, 2\]"):
        ops.subset_correct(contrib, torch.zeros(17, 2), torch.zeros(2), torch.zeros(1, dtype=torch.long))


@pytest.mark.ext
@pytest.mark.parametrize("case", ["absent_shape", "labels_high", "contrib_2d"])
def test_kernel_checks_its_own_arguments(case):
    # torch.ops.bbench.subset_correct called directly (no Python checks) must fail as clearly.
    make, pattern = BAD[case]
    with pytest.raises(ValueError, match=pattern):
        torch.ops.bbench.subset_correct(*make(*_good()))


@pytest.mark.ext
def test_all_subsets_enumerated_once():
    # Each subset index s must see exactly the modalities of its bits: make modality j decisive
    # for class j only when present.
    m = 4
    contrib = torch.zeros(m, 1, m + 1)
    for j in range(m):
        contrib[j, 0, j + 1] = 2.0 ** j
    absent = torch.zeros(m, m + 1)
    bias = torch.zeros(m + 1)
    for label in range(m + 1):
        correct, _ = ops.subset_correct(contrib, absent, bias, torch.tensor([label]), backend="ext")
        for s in range(1 << m):
            top = max((j for j in range(m) if s >> j & 1), default=None)
            expect = 0 if top is None else top + 1
            assert bool(correct[0, s]) == (label == expect), (label, s)

