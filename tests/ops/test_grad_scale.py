"""grad_scale_: exact against the reference without noise; the noise statistically (mean ~ 0,
std ~ noise_std * sigma per tensor), deterministic under a seed and independent of threads."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbench import ops

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def make_grads(shapes, dtype, seed, device="cpu", non_contiguous=()):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shapes):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * (1 + i)).to(dtype)
        if i in non_contiguous and x.dim() >= 2:
            x = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
        elif i in non_contiguous and x.dim() == 1:
            x = torch.stack([x, x], 1)[:, 0]
        out.append(x.to(device))
    return out


shape_st = st.lists(st.integers(0, 70), min_size=0, max_size=3).map(tuple)


@pytest.mark.ext
@SETTINGS
@given(shapes=st.lists(shape_st, min_size=0, max_size=6),
       n_groups=st.integers(1, 3), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_ext_matches_reference_without_noise(shapes, n_groups, data, dtype):
    group = torch.tensor(data.draw(st.lists(st.integers(0, n_groups - 1), min_size=len(shapes),
                                            max_size=len(shapes))), dtype=torch.int64)
    coeff = torch.tensor(data.draw(st.lists(st.sampled_from([1.0, 0.0, 0.5, -2.0, 0.3, 1.7]),
                                            min_size=n_groups, max_size=n_groups)))
    nc = set(data.draw(st.lists(st.integers(0, max(len(shapes) - 1, 0)), max_size=3)))
    a = make_grads(shapes, dtype, 0, non_contiguous=nc)
    b = [t.clone() for t in a]
    ops.grad_scale_(a, group, coeff, backend="ext")
    ops.grad_scale_(b, group, coeff, backend="ref")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_without_noise(dtype):
    a = make_grads([(300,), (17, 5)], dtype, 1)
    b = [t.clone() for t in a]
    group, coeff = torch.tensor([0, 1]), torch.tensor([0.7, 1.3])
    ops.grad_scale_(a, group, coeff, backend="ext")
    ops.grad_scale_(b, group, coeff, backend="ref")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-2, atol=0)


def test_mixed_sizes_against_closed_form(device):
    shapes = [(1,), (0,), (3, 3), (100_000,), (70_000, 3), (2, 1, 5)]
    grads = make_grads(shapes, torch.float32, 2, device)
    before = [g.clone() for g in grads]
    group = torch.tensor([0, 1, 2, 0, 1, 2], device=device)
    coeff = torch.tensor([0.5, 1.0, -3.0], device=device)
    ops.grad_scale_(grads, group, coeff, backend="ext")
    for g, x, j in zip(grads, before, group.tolist()):
        assert torch.equal(g, x * coeff[j].item())


def test_empty_list_is_a_no_op(device):
    ops.grad_scale_([], torch.zeros(0, dtype=torch.int64), torch.tensor([0.5]), backend="ext")
    ops.grad_scale_([], torch.zeros(0, dtype=torch.int64), torch.tensor([0.5]),
                    torch.tensor([1.0]), seed=3, backend="ext")
    ops.grad_scale_([], torch.zeros(0, dtype=torch.int64), torch.tensor([0.5]), backend="ref")


# ---- noise ------------------------------------------------------------------------------------

def _noise_case(device, dtype=torch.float32, n=200_000):
    g = torch.Generator().manual_seed(4)
    grads = [(torch.randn(n, generator=g) * 3.0 + 1.0).to(dtype).to(device),
             (torch.randn(400, 500, generator=g) * 0.01).to(dtype).to(device),
             (torch.rand(n // 2, generator=g) * 5).to(dtype).to(device)]
    group = torch.tensor([0, 1, 1], device=device)
    coeff = torch.tensor([2.0, 0.5], device=device)
    noise = torch.tensor([1.0, 0.25], device=device)
    return grads, group, coeff, noise


@pytest.mark.parametrize("backend", ["ext", "ref"])
def test_noise_statistics(any_device, backend, need_ext):
    device = any_device
    if backend == "ext":
        need_ext(device)
    grads, group, coeff, noise = _noise_case(device)
    before = [g.clone().double() for g in grads]
    sigma = [x.std().item() + 1e-8 for x in before]  # before scaling
    ops.grad_scale_(grads, group, coeff, noise, seed=123, backend=backend)
    for g, x, s, j in zip(grads, before, sigma, group.tolist()):
        z = (g.double() - coeff[j].item() * x) / (noise[j].item() * s)  # should be N(0, 1)
        n = z.numel()
        assert abs(z.mean().item()) < 5 / math.sqrt(n), z.mean().item()
        assert abs(z.std().item() - 1) < 5 * math.sqrt(0.5 / n) + 1e-3, z.std().item()
        # Gaussian shape: fourth moment 3, tails rare
        assert abs((z**4).mean().item() - 3) < 0.2
        assert (z.abs() > 4).double().mean().item() < 1e-3


@pytest.mark.ext
def test_noise_is_independent_across_tensors_and_elements():
    grads = [torch.zeros(100_000), torch.zeros(100_000)]
    # sigma of a constant tensor is 1e-8; noise_std 1e8 scales the noise back to ~N(0, 1)
    ops.grad_scale_(grads, torch.tensor([0, 0]), torch.tensor([1.0]), torch.tensor([1e8]), seed=9,
                    backend="ext")
    a, b = grads[0].double(), grads[1].double()
    assert abs(a.std().item() - 1) < 0.02 and abs(b.std().item() - 1) < 0.02
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.02
    assert abs(torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1].item()) < 0.02  # neighbours
    assert abs(torch.corrcoef(torch.stack([a[:-64], a[64:]]))[0, 1].item()) < 0.02  # same counter


def test_noise_deterministic_under_seed(device):
    runs = []
    for seed in (5, 5, 6):
        grads, group, coeff, noise = _noise_case(device)
        ops.grad_scale_(grads, group, coeff, noise, seed=seed, backend="ext")
        runs.append(grads)
    assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not any(torch.equal(x, y) for x, y in zip(runs[0], runs[2]))


@pytest.mark.ext
def test_noise_independent_of_thread_count():
    prev = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            grads, group, coeff, noise = _noise_case("cpu", n=300_000)
            ops.grad_scale_(grads, group, coeff, noise, seed=77, backend="ext")
            out.append(grads)
    finally:
        torch.set_num_threads(prev)
    for other in out[1:]:
        assert all(torch.equal(x, y) for x, y in zip(out[0], other))


def test_noise_follows_torch_default_generator_when_no_seed(device):
    res = []
    for _ in range(2):
        torch.manual_seed(31)
        grads, group, coeff, noise = _noise_case(device, n=1000)
        ops.grad_scale_(grads, group, coeff, noise, backend="ext")
        res.append(grads)
    assert all(torch.equal(x, y) for x, y in zip(*res))


def test_noise_only_where_flagged(device):
    grads, group, coeff, _ = _noise_case(device, n=5000)
    before = [g.clone() for g in grads]
    noise = torch.tensor([0.0, 1.0], device=device)
    ops.grad_scale_(grads, group, coeff, noise, seed=1, backend="ext")
    assert torch.equal(grads[0], before[0] * 2.0)  # group 0: coeff only
    assert not torch.equal(grads[1], before[1] * 0.5)


def test_one_element_tensor_gets_sigma_1e_8(device):
    grads = [torch.tensor([3.0], device=device), torch.tensor([5.0, 5.0, 5.0], device=device)]
    ops.grad_scale_(grads, torch.tensor([0, 0]), torch.tensor([1.0]), torch.tensor([1.0]), seed=2,
                    backend="ext")
    assert abs(grads[0].item() - 3.0) < 1e-6 and torch.allclose(grads[1], torch.full((3,), 5.0))


@pytest.mark.ext
def test_non_contiguous_with_noise_matches_contiguous():
    base = make_grads([(64, 300), (1000,)], torch.float32, 3)
    a = [base[0].t().contiguous().t(), base[1].clone()]
    b = [base[0].clone(), base[1].clone()]
    assert not a[0].is_contiguous()
    args = (torch.tensor([0, 1]), torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0]))
    ops.grad_scale_(a, *args, seed=8, backend="ext")
    ops.grad_scale_(b, *args, seed=8, backend="ext")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_noise_other_dtypes(dtype):
    grads, group, coeff, noise = _noise_case("cpu", dtype=dtype, n=50_000)
    before = [g.clone().double() for g in grads]
    ops.grad_scale_(grads, group, coeff, noise, seed=3, backend="ext")
    g, x = grads[0].double(), before[0]
    z = (g - 2.0 * x) / (x.std() + 1e-8)
    tol = 0.05 if dtype == torch.bfloat16 else 0.03
    assert abs(z.std().item() - 1) < tol and abs(z.mean().item()) < tol


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["ref", "ext"])
def test_bad_arguments_raise_quoting_shapes(backend, need_ext):
    if backend == "ext":
        need_ext("cpu")
    g = [torch.zeros(3), torch.zeros(2, 2)]
    with pytest.raises(ValueError, match=r"group must .* shape \[len\(grads\)\] = \[2\], got \[3\]"):
        ops.grad_scale_(g, torch.tensor([0, 0, 1]), torch.tensor([1.0]), backend=backend)
    with pytest.raises(ValueError, match=r"group must be int64, got (torch\.int32|Int)"):
        ops.grad_scale_(g, torch.tensor([0, 0], dtype=torch.int32), torch.tensor([1.0]), backend=backend)
    with pytest.raises(ValueError, match=r"group values must lie in \[0, G\) = \[0, 1\).*got values in \[0, 1\]"):
        ops.grad_scale_(g, torch.tensor([0, 1]), torch.tensor([1.0]), backend=backend)
    with pytest.raises(ValueError, match=r"noise_std must be None or a floating tensor of the shape of coeff \[2\], got \[3\]"):
        ops.grad_scale_(g, torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), torch.ones(3), backend=backend)
    with pytest.raises(ValueError, match=r"grads\[1\] \(shape \[2, 2\]\) is (torch\.float64|Double)"):
        ops.grad_scale_([g[0], g[1].double()], torch.tensor([0, 0]), torch.tensor([1.0]), backend=backend)
    with pytest.raises(ValueError, match=r"grads must be float32, float64, bfloat16 or float16, got (torch\.int64|Long)"):
        ops.grad_scale_([torch.zeros(2, dtype=torch.long)], torch.tensor([0]), torch.tensor([1.0]), backend=backend)


@pytest.mark.ext
def test_kernel_checks_its_own_arguments():
    with pytest.raises(ValueError, match=r"group must .* shape \[len\(grads\)\] = \[1\], got \[2\]"):
        torch.ops.bbench.grad_scale_([torch.zeros(3)], torch.tensor([0, 1]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"group values must lie in \[0, G\) = \[0, 1\).*got values in \[4, 4\]"):
        torch.ops.bbench.grad_scale_([torch.zeros(3)], torch.tensor([4]), torch.tensor([1.0]))
