"""Statistics across seeds (bbench/report/stats.py): intervals, paired tests, P(improvement)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats as scipy_stats

from bbench.report.stats import bootstrap_ci, paired, paired_p_value, summarize

values = st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=25, deadline=None)
@given(values)
def test_interval_contains_the_mean_and_lies_within_the_data(x):
    s = summarize(x)
    assert s.n == len(x)
    assert min(x) - 1e-12 <= s.ci_low <= s.mean + 1e-12 <= s.ci_high + 2e-12 <= max(x) + 3e-12


@settings(max_examples=20, deadline=None)
@given(values, st.floats(-5, 5, allow_nan=False))
def test_shifting_every_value_shifts_mean_and_interval(x, c):
    a, b = summarize(x), summarize([v + c for v in x])
    assert b.mean == pytest.approx(a.mean + c, abs=1e-9)
    assert b.ci_low == pytest.approx(a.ci_low + c, abs=1e-9)
    assert b.ci_high == pytest.approx(a.ci_high + c, abs=1e-9)
    assert b.std == pytest.approx(a.std, abs=1e-9)


def test_interval_is_the_percentile_bootstrap_and_reproducible():
    # two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    x = [0.61, 0.64, 0.58, 0.70, 0.66]
    assert bootstrap_ci(x) == bootstrap_ci(x)  # fixed resampling seed
    rng = np.random.default_rng(0)
    means = np.asarray(x)[rng.integers(0, 5, size=(10_000, 5))].mean(axis=1)
    assert bootstrap_ci(x) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))


def test_one_seed_has_no_spread_and_no_interval():
    s = summarize([0.7])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (1, 0.7, None, None, None)
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_paired_test_is_scipys_paired_t_test_on_the_shared_seeds():
    a = {0: 0.60, 1: 0.72, 2: 0.65, 3: 0.70, 9: 0.99}
    b = {0: 0.58, 1: 0.69, 2: 0.66, 3: 0.64, 7: 0.10}
    r = paired(a, b)
    assert r.seeds == (0, 1, 2, 3) and r.n == 4
    expected = scipy_stats.ttest_rel([0.60, 0.72, 0.65, 0.70], [0.58, 0.69, 0.66, 0.64]).pvalue
    assert r.p_value == pytest.approx(expected)
    assert r.mean_diff == pytest.approx(np.mean([0.02, 0.03, -0.01, 0.06]))
    assert r.p_improve == 0.75  # 3 of 4 seed pairs higher
    assert r.ci_low <= r.mean_diff <= r.ci_high


def test_pairing_is_by_seed_not_by_order():
    a, b = {0: 0.5, 1: 0.9, 2: 0.7}, {2: 0.6, 0: 0.4, 1: 0.8}
    r = paired(a, b)
    assert r.mean_diff == pytest.approx(0.1) and r.p_improve == 1.0


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=6),
       st.floats(0.01, 0.5, allow_nan=False))
def test_a_constant_positive_difference_gets_the_exact_sign_test_p_value(ref, d):
    # Zero spread leaves the t statistic undefined: n equal gains are worth what a sign test
    # says, 2 * 0.5^n (significant at 0.05 from 6 seeds on), never p = 0.
    r = paired({i: v + d for i, v in enumerate(ref)}, dict(enumerate(ref)))
    assert r.p_value == pytest.approx(2 * 0.5 ** len(ref)) and r.p_improve == 1.0
    assert r.significant_win() == (len(ref) >= 6)
    assert r.ci_low == pytest.approx(d) and r.ci_high == pytest.approx(d)


def test_identical_values_are_no_win():
    r = paired({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert r.p_value == 1.0 and r.p_improve == 0.5 and not r.significant_win()


def test_fewer_than_two_pairs_have_no_test_and_no_interval():
    r = paired({0: 0.9, 1: 0.8}, {1: 0.5})
    assert r.n == 1 and r.p_value is None and r.ci_low is None and not r.significant_win()
    assert paired({0: 0.9}, {1: 0.5}) is None
    assert paired_p_value(np.array([0.9]), np.array([0.5])) is None


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.integers(0, 9), st.floats(0, 1, allow_nan=False), min_size=1),
       st.dictionaries(st.integers(0, 9), st.floats(0, 1, allow_nan=False), min_size=1))
def test_probability_of_improvement_is_a_fraction_of_pairs(a, b):
    r = paired(a, b)
    if r is None:
        assert not set(a) & set(b)
        return
    assert 0.0 <= r.p_improve <= 1.0
    assert r.p_value is None or 0.0 <= r.p_value <= 1.0
    wins = sum((a[s] > b[s]) + 0.5 * (a[s] == b[s]) for s in r.seeds)
    assert r.p_improve == pytest.approx(wins / r.n)


def test_a_negative_significant_difference_is_not_a_win():
    r = paired({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}, {0: 0.6, 1: 0.71, 2: 0.79, 3: 0.9})
    assert r.p_value < 0.05 and r.mean_diff < 0 and not r.significant_win()
