"""Statistics across seeds: mean, spread, bootstrap intervals and paired comparisons.

A configuration run with several seeds is a small sample (3 to 10 values), so the report
says how sure it is, not only what the mean was:

- **Interval of a mean**: 95 % percentile bootstrap over seeds (resample the n values with
  replacement `RESAMPLES` times, take the 2.5 % and 97.5 % quantiles of the resampled
  means). No normality is assumed; with n < 2 there is no interval (None), never a fake one.
  The resampling Generator has a fixed seed, so a report of the same records is the same
  report, byte for byte.
- **Paired comparison** (a method vs Baseline, or vs the best Unimodal row): the two are
  paired by training seed (the same seed means the same split shuffling and initial draws),
  which removes the seed-to-seed variation both share. Reported: the mean difference, its
  percentile bootstrap interval (over the paired differences), the two-sided paired t-test
  p-value (`scipy.stats.ttest_rel`) and the probability of improvement.
- **Probability of improvement**: the fraction of seed pairs in which the method beats the
  reference, a tie counting one half. It is read directly off the data (no resampling), so a
  reader can check it by eye against the per-seed records.
- **Degenerate cases**: with n < 2 pairs there is no test (p = None). When every paired
  difference is the same number (zero spread: frequent with accuracies on small test sets)
  the t statistic is undefined; the p-value is then the exact two-sided sign test's,
  2·0.5^n, for a non-zero constant difference (significant at 0.05 only from 6 seeds on),
  and 1 for a zero one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 10_000
"""Bootstrap resamples: the 2.5 % quantile's Monte-Carlo error is then well below 0.1 points."""
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
"""Seed of the resampling Generator: the same records always give the same intervals."""
SIGNIFICANCE = 0.05
"""A paired win is marked significant at p below this (two-sided paired t-test)."""

METHOD_TEXT = (f"Intervals: {100 * CONFIDENCE:.0f} % percentile bootstrap over seeds "
               f"({RESAMPLES} resamples of the per-seed values, fixed resampling seed "
               f"{BOOTSTRAP_SEED}); none with fewer than 2 seeds. Paired comparisons pair runs by "
               f"training seed: mean difference, its bootstrap interval, the two-sided paired "
               f"t-test p-value (scipy.stats.ttest_rel; for a constant non-zero difference the exact "
               f"sign test's 2 x 0.5^n; no test with fewer than 2 pairs) and the probability of improvement (fraction of "
               f"seed pairs where the method scores higher, ties counting one half). A win marked "
               f"significant has p < {SIGNIFICANCE} and a positive mean difference.")
"""The statistics as the report states them."""


@dataclass(frozen=True)
class Summary:
    """One metric of one configuration over its seeds."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof 1); None with one value
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Paired:
    """A method against a reference on the seeds both have."""

    n: int
    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_improve: float
    seeds: tuple[int, ...]

    def significant_win(self, alpha: float = SIGNIFICANCE) -> bool:
        """A positive difference the paired test finds significant."""
        return self.p_value is not None and self.p_value < alpha and self.mean_diff > 0


def bootstrap_ci(values: Sequence[float], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (vectorised: one index draw of resamples × n)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    # the quantiles of resampled means lie within [min, max] of the data; clip the last ulp
    return float(max(low, x.min())), float(min(high, x.max()))


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation and bootstrap interval of per-seed values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values to summarize")
    ci = bootstrap_ci(x)
    return Summary(int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None,
                   *(ci if ci else (None, None)))


def paired(method: Mapping[int, float], reference: Mapping[int, float]) -> Paired | None:
    """The method's per-seed values against the reference's, paired by seed (None: no shared seed)."""
    seeds = tuple(sorted(set(method) & set(reference)))
    if not seeds:
        return None
    a = np.array([method[s] for s in seeds], dtype=float)
    b = np.array([reference[s] for s in seeds], dtype=float)
    diff = a - b
    ci = bootstrap_ci(diff)
    p_improve = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
    return Paired(len(seeds), float(diff.mean()), *(ci if ci else (None, None)),
                  paired_p_value(a, b), p_improve, seeds)


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided paired t-test p-value; the degenerate cases as the module docstring says."""
    diff = a - b
    if diff.size < 2:
        return None
    if np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):
        if abs(float(diff.mean())) <= 1e-12:
            return 1.0
        # Zero spread: the t statistic is undefined (infinite), and claiming p = 0 from 2 or 3
        # equal differences would overstate them. The exact two-sided sign test is what such
        # data supports: all n pairs moved the same way, p = 2 * 0.5^n (0.25 with 3 seeds).
        return float(scipy_stats.binomtest(diff.size, diff.size, 0.5).pvalue)
    p = float(scipy_stats.ttest_rel(a, b).pvalue)
    return p if math.isfinite(p) else None
