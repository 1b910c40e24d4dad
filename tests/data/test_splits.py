"""The §0.3 carve-out: exact rule, invariants (Hypothesis) and the id-list files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbench.data.splits import (carve_count, id_order, read_id_list, stratified_carve_out,
                                val_list_path, write_id_list)


def reference_carve_out(ids: list, labels: list[int], fraction: float, seed: int) -> set:
    """The spec text, transcribed as plainly as possible: returns the carved *ids*."""
    numeric = all(isinstance(i, int) for i in ids)
    samples = sorted(zip(ids, labels), key=lambda s: s[0] if numeric else str(s[0]))
    rng = np.random.default_rng(seed)
    carved: set = set()
    for label in sorted(set(labels)):
        members = [i for i, y in samples if y == label]
        n = len(members)
        order = rng.permutation(n)
        k = 0 if n == 1 else max(1, math.floor(fraction * n + 0.5))
        carved.update(members[j] for j in order[:k])
    return carved


@st.composite
def split_problems(draw: st.DrawFn) -> tuple[list, list[int], float, int]:
    n = draw(st.integers(0, 60))
    if draw(st.booleans()):
        ids: list = draw(st.lists(st.integers(-10**6, 10**6), min_size=n, max_size=n, unique=True))
    else:
        ids = draw(st.lists(st.text("ab09_-", min_size=1, max_size=6), min_size=n, max_size=n,
                            unique=True))
    labels = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    fraction = draw(st.sampled_from([0.1, 0.3, 0.5]) | st.floats(0.01, 0.99))
    seed = draw(st.integers(0, 2**32 - 1))
    return ids, labels, fraction, seed


@settings(max_examples=200, deadline=None)
@given(split_problems())
def test_carve_out_partitions_and_matches_the_rule(problem: tuple) -> None:
    ids, labels, fraction, seed = problem
    kept, carved = stratified_carve_out(ids, labels, fraction, seed)
    assert sorted(kept + carved) == list(range(len(ids)))
    assert kept == sorted(kept) and carved == sorted(carved)
    for label in set(labels):
        n = labels.count(label)
        got = sum(labels[p] == label for p in carved)
        assert got == (0 if n == 1 else max(1, math.floor(fraction * n + 0.5)))
    assert {ids[p] for p in carved} == reference_carve_out(ids, labels, fraction, seed)


@settings(max_examples=100, deadline=None)
@given(split_problems(), st.randoms(use_true_random=False))
def test_carve_out_is_deterministic_and_independent_of_input_order(problem: tuple, rnd) -> None:
    ids, labels, fraction, seed = problem
    _, carved = stratified_carve_out(ids, labels, fraction, seed)
    assert stratified_carve_out(ids, labels, fraction, seed)[1] == carved
    order = list(range(len(ids)))
    rnd.shuffle(order)
    _, carved_shuffled = stratified_carve_out([ids[i] for i in order], [labels[i] for i in order],
                                              fraction, seed)
    assert {ids[order[p]] for p in carved_shuffled} == {ids[p] for p in carved}


@pytest.mark.parametrize("n, fraction, expected", [
    (1, 0.1, 0), (2, 0.1, 1), (4, 0.1, 1), (5, 0.1, 1), (15, 0.1, 2), (140, 0.1, 14),
    (200, 0.3, 60), (2, 0.5, 1), (3, 0.5, 2),
])
def test_carve_count_table(n: int, fraction: float, expected: int) -> None:
    assert carve_count(n, fraction) == expected


def test_integer_ids_sort_numerically_and_strings_as_strings() -> None:
    assert id_order([10, 9, 100]).tolist() == [1, 0, 2]
    assert id_order(np.array([10, 9, 100])).tolist() == [1, 0, 2]
    assert id_order(["10", "9", "100"]).tolist() == [0, 2, 1]


def test_seed_changes_the_carve_out_but_not_the_counts() -> None:
    ids, labels = list(range(100)), [i % 2 for i in range(100)]
    a = stratified_carve_out(ids, labels, 0.1, 0)[1]
    b = stratified_carve_out(ids, labels, 0.1, 1)[1]
    assert a != b and len(a) == len(b) == 10


@pytest.mark.parametrize("ids, labels, fraction, message", [
    ([1, 2, 2], [0, 0, 1], 0.1, "sample id 2 occurs more than once"),
    ([1, 2], [0], 0.1, "2 ids but labels of shape (1,)"),
    ([1, 2], [0.5, 1.0], 0.1, "labels must be integers"),
    ([1, 2], [0, 1], 0.0, "fraction=0.0 is out of range"),
    ([1, 2], [0, 1], 1.0, "fraction=1.0 is out of range"),
])
def test_carve_out_rejects_bad_input(ids: list, labels: list, fraction: float, message: str) -> None:
    with pytest.raises(ValueError) as err:
        stratified_carve_out(ids, labels, fraction, 0)
    assert message in str(err.value)


def test_id_list_round_trip(tmp_path: Path) -> None:
    path = val_list_path(tmp_path / "splits", "cremad", 3)
    assert path.name == "cremad-val-seed3.txt"
    write_id_list(path, ["1001_DFA_ANG_XX", "-abc_000010", 7])
    assert read_id_list(path) == ["1001_DFA_ANG_XX", "-abc_000010", "7"]
    path.write_bytes(b"\xef\xbb\xbfa\r\nb\r\n\r\n")
    assert read_id_list(path) == ["a", "b"]


def test_id_list_errors_name_the_file_and_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be written one per line"):
        write_id_list(tmp_path / "x.txt", ["a\nb"])
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"dup\.txt: sample id 'a' occurs more than once"):
        read_id_list(dup)
