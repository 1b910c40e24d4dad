import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bbench.config.specs import ModelSpec
from bbench.methods.baseline import Baseline
from bbench.methods.base import RunContext
from bbench.metrics.shapley import (
    compute_shapley, imbalance_degree, shapley_from_values, shapley_tensor, subset_correct_counts)
from bbench.models.multimodal import build_multimodal_model
from bbench.data.base import TensorMultimodalDataset
from torch.utils.data import DataLoader
from bbench.testing.methods import toy_info

values_for = lambda M: st.lists(st.floats(0, 1), min_size=1 << M, max_size=1 << M)  # noqa: E731


@given(st.integers(1, 5).flatmap(lambda M: st.tuples(st.just(M), values_for(M))))
def test_efficiency_sum_of_shapley_equals_full_minus_empty(case):
    M, values = case
    phi = shapley_from_values(values, M)
    assert math.isclose(sum(phi), values[-1] - values[0], abs_tol=1e-9)


@given(st.integers(2, 5).flatmap(lambda M: st.tuples(st.just(M), values_for(M))))
def test_imbalance_is_in_unit_interval_and_order_free(case):
    M, values = case
    phi = shapley_from_values(values, M)
    I = imbalance_degree(phi)
    assert 0 <= I <= 1 + 1e-12
    assert math.isclose(imbalance_degree(list(reversed(phi))), I, abs_tol=1e-12)


@given(values_for(2))
def test_two_modalities_imbalance_is_difference_of_singletons(values):
    phi = shapley_from_values(values, 2)
    assert math.isclose(imbalance_degree(phi), abs(values[1] - values[2]), abs_tol=1e-12)


def test_symmetric_players_get_equal_values_and_zero_imbalance():
    values = [0.1, 0.5, 0.5, 0.9]
    phi = shapley_from_values(values, 2)
    assert phi == pytest.approx([0.4, 0.4]) and imbalance_degree(phi) == pytest.approx(0)


def test_three_modality_imbalance_is_one_third_of_pairwise_sum():
    phi = [0.5, 0.2, 0.1]
    assert imbalance_degree(phi) == pytest.approx((0.3 + 0.4 + 0.1) / 3)


@given(st.integers(1, 4).flatmap(lambda M: st.lists(values_for(M), min_size=1, max_size=4)))
@settings(max_examples=30)
def test_vectorised_shapley_matches_scalar_formula(rows):
    M = len(rows[0]).bit_length() - 1
    tensor = shapley_tensor(torch.tensor(rows, dtype=torch.float64))
    expected = torch.tensor([shapley_from_values(r, M) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(tensor, expected)


@pytest.mark.parametrize("fusion", ["concat", "sum", "shared", "film", "gated"])
@pytest.mark.parametrize("mask", ["input", "feature"])
@pytest.mark.parametrize("M", [2, 3])
def test_one_pass_paths_agree_exactly_with_masked_passes(fusion, mask, M):
    torch.manual_seed(M)
    dims = (6, 4, 5)[:M]
    info = toy_info(dims=dims, num_classes=5, names=("a", "b", "c")[:M])
    spec = ModelSpec(fusion=fusion)
    model = build_multimodal_model(info, spec).double()
    for p in model.parameters():  # push biases away from 0 so E_m(0) != 0
        torch.nn.init.normal_(p, std=0.5)
    n = 120
    data = TensorMultimodalDataset({m: torch.randn(n, d, dtype=torch.float64) for m, d in zip(info.modalities, dims)},
                                   torch.randint(0, 5, (n,)))
    loader = DataLoader(data, batch_size=50, collate_fn=lambda b: b)
    method = Baseline(None, RunContext(info, spec, 0, torch.device("cpu")))
    fast, total = subset_correct_counts(method, model, loader, torch.device("cpu"), mask)
    slow, _ = subset_correct_counts(method, model, loader, torch.device("cpu"), mask, path="masked-passes")
    assert total == n
    assert torch.equal(fast, slow)
    assert fast.sum() > 0
    result = compute_shapley(method, model, loader, torch.device("cpu"), mask)
    assert abs(result.efficiency_gap) < 1e-12
