"""Search spaces on `param(..., search=...)`: declared inside their field's range, drawn
reproducibly and within bounds, log-uniform where strengths span orders of magnitude."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from bbench.config.fields import (Choice, IntRange, LogUniform, SpecError, Uniform, fields_of,
                                  param, sample_configuration, search_spaces)
from bbench.config.specs import OptimizerSpec
from bbench.methods.base import WindowParams
from bbench.methods.registry import METHODS


def test_every_declared_space_lies_inside_its_fields_range_and_draws_accepted_values():
    declared = 0
    for name in METHODS:
        cls = METHODS.get(name)
        spaces = search_spaces(cls.Params, name)  # raises for a space leaving its range
        rng = random.Random(0)
        for _ in range(20):
            config = sample_configuration(spaces, rng)
            built = cls.Params(**config) if config else None
            for key, value in config.items():
                assert getattr(built, key) == value
        declared += len(spaces)
    assert declared >= 15  # the strengths of the balancing methods


def test_windows_stay_fixed_and_the_optimizer_declares_a_log_uniform_learning_rate():
    for name in METHODS:
        spaces = search_spaces(METHODS.get(name).Params, name)
        assert not set(spaces) & set(fields_of(WindowParams))
    lr = search_spaces(OptimizerSpec, "optimizer")
    assert set(lr) == {"lr"} and isinstance(lr["lr"], LogUniform)


@settings(max_examples=30, deadline=None)
@given(lo=st.floats(1e-6, 1e3), ratio=st.floats(1.5, 1e4), seed=st.integers(0, 2**31))
def test_log_uniform_draws_stay_within_bounds(lo, ratio, seed):
    space = LogUniform(lo, lo * ratio)
    rng = random.Random(seed)
    assert all(space.lo <= space.sample(rng) <= space.hi for _ in range(50))


def test_log_uniform_is_uniform_in_log_space_so_each_decade_gets_an_equal_share():
    rng = random.Random(1)
    draws = [LogUniform(1e-3, 1e1).sample(rng) for _ in range(4000)]
    per_decade = [sum(10.0 ** k <= d < 10.0 ** (k + 1) for d in draws) for k in range(-3, 1)]
    assert all(abs(n / len(draws) - 0.25) < 0.03 for n in per_decade)


def test_uniform_int_range_and_choice_cover_their_whole_space():
    rng = random.Random(2)
    assert {IntRange(1, 3).sample(rng) for _ in range(200)} == {1, 2, 3}
    assert {Choice(("a", "b")).sample(rng) for _ in range(200)} == {"a", "b"}
    draws = [Uniform(0.2, 0.4).sample(rng) for _ in range(500)]
    assert 0.2 <= min(draws) < 0.22 and 0.38 < max(draws) <= 0.4


def test_real_draws_keep_four_significant_digits_so_printed_values_are_exact():
    rng = random.Random(3)
    for _ in range(100):
        value = LogUniform(1e-4, 1e-1).sample(rng)
        assert float(f"{value:.4g}") == value


def test_the_same_generator_state_draws_the_same_configuration():
    spaces = {"b": Uniform(0.0, 1.0), "a": LogUniform(0.1, 10.0), "k": IntRange(1, 9)}
    first = sample_configuration(spaces, random.Random(7))
    again = sample_configuration(dict(reversed(list(spaces.items()))), random.Random(7))
    assert first == again and list(first) == ["a", "b", "k"]


@pytest.mark.parametrize("make", [lambda: LogUniform(0.0, 1.0), lambda: LogUniform(2.0, 1.0),
                                  lambda: Uniform(1.0, 1.0), lambda: IntRange(1, 1),
                                  lambda: IntRange(0.5, 2), lambda: Choice(("only",))])
def test_an_empty_or_ill_formed_space_is_refused(make):
    with pytest.raises(SpecError):
        make()


def test_a_space_leaving_its_fields_range_is_refused_with_the_field_named():
    @dataclass(frozen=True)
    class Bad:
        p: float = param(0.5, ge=0, le=1, search=Uniform(0.5, 2.0))

    with pytest.raises(SpecError, match=r"Bad: the search space uniform\(0.5, 2\) of p leaves "
                                        r"its valid range 0 <= p <= 1"):
        search_spaces(Bad, "Bad")


def test_log_uniform_median_is_the_geometric_mean():
    rng = random.Random(4)
    draws = sorted(LogUniform(0.01, 100.0).sample(rng) for _ in range(2001))
    assert abs(math.log10(draws[1000])) < 0.15
