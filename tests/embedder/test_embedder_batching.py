from __future__ import annotations

import numpy as np
import pytest

from embedder import plan_batches


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("min_fill", [0.0, 0.75])
def test_plan_covers_every_index_once_within_budget(seed: int, min_fill: float) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 600, size=int(rng.integers(1, 400)))
    budget, cap = int(rng.integers(64, 5000)), int(rng.integers(1, 64))
    batches = plan_batches(lengths, batch_tokens=budget, max_batch_size=cap, min_fill=min_fill)
    seen = np.concatenate(batches)
    assert np.array_equal(np.sort(seen), np.arange(len(lengths)))
    for batch in batches:
        padded = lengths[batch].max() * len(batch)
        assert 1 <= len(batch) <= cap
        assert padded <= budget or len(batch) == 1
        assert lengths[batch].sum() >= min_fill * padded


def test_longest_items_first_and_batches_are_full() -> None:
    lengths = [5, 50, 10, 50, 20]
    batches = plan_batches(lengths, batch_tokens=100, max_batch_size=8)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2, 0]]


def test_over_long_item_gets_its_own_batch() -> None:
    batches = plan_batches([1000, 3, 3], batch_tokens=100, max_batch_size=8)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_max_batch_size_caps_batches() -> None:
    batches = plan_batches([1] * 10, batch_tokens=10_000, max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_min_fill_closes_batches_before_padding_dominates() -> None:
    lengths = [100, 90, 80, 10, 10, 10]
    plain = plan_batches(lengths, batch_tokens=10_000, max_batch_size=8)
    filled = plan_batches(lengths, batch_tokens=10_000, max_batch_size=8, min_fill=0.75)
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3, 4, 5]]
    assert [b.tolist() for b in filled] == [[0, 1, 2], [3, 4, 5]]


def test_zero_lengths_are_allowed() -> None:
    batches = plan_batches([0, 0, 0], batch_tokens=2, max_batch_size=8)
    assert [len(b) for b in batches] == [2, 1]


def test_empty_input() -> None:
    assert plan_batches([], batch_tokens=100, max_batch_size=8) == []


@pytest.mark.parametrize(
    ("lengths", "budget", "cap"),
    [([1, 2], 0, 4), ([1, 2], 10, 0), ([-1], 10, 4), ([[1, 2]], 10, 4)],
)
def test_bad_arguments_raise(lengths: list[int], budget: int, cap: int) -> None:
    with pytest.raises(ValueError):
        plan_batches(lengths, batch_tokens=budget, max_batch_size=cap)


@pytest.mark.parametrize("min_fill", [-0.1, 1.5])
def test_bad_min_fill_raises(min_fill: float) -> None:
    with pytest.raises(ValueError, match="min_fill"):
        plan_batches([1, 2], batch_tokens=10, max_batch_size=4, min_fill=min_fill)
