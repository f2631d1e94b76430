from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedder import plan_batches
from embedder.batching import plan_bucketed


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


# --- plan_bucketed: batches padded to CUDA-graph buckets --------------------------------------


def _bucket(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


def _cost(
    lengths: np.ndarray, batches: list[np.ndarray], row_step: int, length_step: int, batch_cost: int
) -> int:
    return sum(
        _bucket(len(b), row_step) * _bucket(int(lengths[b].max()), length_step) + batch_cost
        for b in batches
    )


@pytest.mark.parametrize("seed", range(25))
def test_bucketed_plan_is_the_cheapest_cut_of_the_sorted_items(seed: int) -> None:
    rng = np.random.default_rng(seed)
    row_step, length_step = int(rng.integers(1, 6)), 8
    n = int(rng.integers(1, 10 * row_step + 1))  # at most 10 cut points to brute-force
    lengths = rng.integers(1, 300, size=n)
    budget, cap = int(rng.integers(200, 6000)), int(rng.integers(row_step, 30))
    batch_cost = int(rng.choice([0, 50, 500, 5000]))
    kw = dict(
        batch_tokens=budget,
        max_batch_size=cap,
        row_step=row_step,
        length_step=length_step,
        batch_cost=batch_cost,
    )
    batches = plan_bucketed(lengths, **kw)
    order = np.argsort(-lengths, kind="stable")
    assert np.array_equal(np.concatenate(batches), order)  # longest first, each index once
    for b in batches[:-1]:
        assert len(b) % row_step == 0  # only the last batch has padded rows
    for b in batches:
        fits = (
            len(b) <= cap
            and _bucket(len(b), row_step) * _bucket(int(lengths[b].max()), length_step) <= budget
        )
        assert fits or len(b) <= row_step
    # Brute force over every allowed set of cuts: none is cheaper.
    points = list(range(row_step, n, row_step))
    best = None
    for mask in range(1 << len(points)):
        cuts = [0, *(p for i, p in enumerate(points) if mask >> i & 1), n]
        plan = [order[a:b] for a, b in itertools.pairwise(cuts)]
        if all(
            len(p) <= row_step
            or (
                len(p) <= cap
                and _bucket(len(p), row_step) * _bucket(int(lengths[p].max()), length_step)
                <= budget
            )
            for p in plan
        ):
            c = _cost(lengths, plan, row_step, length_step, batch_cost)
            best = c if best is None else min(best, c)
    assert _cost(lengths, batches, row_step, length_step, batch_cost) == best


def test_bucketed_plan_cuts_mixed_lengths_only_when_it_pays() -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.normal(95, 40, 100), 20, 200).astype(int)  # one query's candidates
    kw = dict(batch_tokens=65_536, max_batch_size=256, row_step=16, length_step=32)
    one = plan_bucketed(lengths, batch_cost=10**9, **kw)
    assert [len(b) for b in one] == [100]
    cut = plan_bucketed(lengths, batch_cost=2048, **kw)
    assert 2 <= len(cut) <= 4
    padded = _cost(lengths, cut, 16, 32, 0)
    assert padded <= 0.8 * _cost(lengths, one, 16, 32, 0)
    equal = np.full(100, 64)  # nothing to gain from a cut
    assert len(plan_bucketed(equal, batch_cost=1, **kw)) == 1
    assert plan_bucketed([], batch_cost=1, **kw) == []
    with pytest.raises(ValueError):
        plan_bucketed(lengths, batch_cost=-1, **kw)
