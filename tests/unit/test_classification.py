import pytest
import torch
from hypothesis import given, strategies as st

from bbench.metrics.classification import accuracies_and_f1, accuracy, macro_f1


def reference_macro_f1(pred: list[int], true: list[int], k: int) -> float:
    scores = []
    for c in range(k):
        tp = sum(p == c and t == c for p, t in zip(pred, true))
        fp = sum(p == c and t != c for p, t in zip(pred, true))
        fn = sum(p != c and t == c for p, t in zip(pred, true))
        scores.append(0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / k


@given(st.integers(2, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60))))
def test_macro_f1_matches_the_per_class_definition(case):
    k, pairs = case
    pred, true = zip(*pairs)
    got = macro_f1(torch.tensor(pred), torch.tensor(true), k)
    assert got == pytest.approx(reference_macro_f1(list(pred), list(true), k), abs=1e-12)
    assert accuracy(torch.tensor(pred), torch.tensor(true)) == pytest.approx(
        sum(p == t for p, t in pairs) / len(pairs))


def test_class_never_seen_nor_predicted_counts_as_zero():
    pred = torch.tensor([0, 1, 0, 1])
    assert macro_f1(pred, pred, 3) == pytest.approx(2 / 3)
    assert macro_f1(pred, pred, 2) == 1.0


@given(st.integers(2, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.integers(1, 4), st.integers(0, 40), st.integers(0, 10**6))))
def test_each_row_of_a_batched_count_is_that_rows_own_metrics(case):
    """Validation counts the fused and every modality's prediction in one confusion count: row
    r's accuracy and F1 are the per-class definitions of row r alone (0.0 for an empty split)."""
    k, rows, n, seed = case
    generator = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, k, (rows, n), generator=generator)
    labels = torch.randint(0, k, (n,), generator=generator)
    accs, f1s = accuracies_and_f1(preds, labels, k)
    for r in range(rows):
        pred, true = preds[r].tolist(), labels.tolist()
        assert f1s[r] == pytest.approx(reference_macro_f1(pred, true, k) if n else 0.0, abs=1e-12)
        assert accs[r] == (sum(p == t for p, t in zip(pred, true)) / n if n else 0.0)
