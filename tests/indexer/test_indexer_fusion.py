from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidRequest
from indexer.fusion import rrf


def test_hand_computed_scores_and_order() -> None:
    ids, scores = rrf([[1, 2, 3], [3, 1, 4]])
    # 1: 1/61 + 1/62, 3: 1/63 + 1/61, 2: 1/62, 4: 1/63
    np.testing.assert_array_equal(ids, [1, 3, 2, 4])
    np.testing.assert_allclose(scores, [1 / 61 + 1 / 62, 1 / 61 + 1 / 63, 1 / 62, 1 / 63])
    assert ids.dtype == np.int64 and scores.dtype == np.float64


def test_k_changes_the_weights() -> None:
    ids, scores = rrf([[10, 20], [20]], k=1)
    np.testing.assert_array_equal(ids, [20, 10])
    np.testing.assert_allclose(scores, [1 / 3 + 1 / 2, 1 / 2])


def test_ties_break_by_best_rank_then_id() -> None:
    # Equal rank multisets give bit-equal scores, whatever order the rankings come in.
    ids, scores = rrf([[7, 5, 3], [3, 7, 5], [5, 3, 7]])
    np.testing.assert_array_equal(ids, [3, 5, 7])
    assert scores[0] == scores[1] == scores[2]
    # With k=1, ranks (1) and (3, 3) both score exactly 1/2: the better single rank wins.
    ids, scores = rrf([[9, 100, 2], [101, 102, 2]], k=1)
    np.testing.assert_array_equal(ids, [9, 101, 2, 100, 102])
    assert scores[0] == scores[1] == scores[2] == 0.5


def test_padding_duplicates_limit_and_numpy_input() -> None:
    ids, scores = rrf([np.array([4, -1, -1]), np.array([-1, 4, 5])])
    np.testing.assert_array_equal(ids, [4, 5])  # -1 is skipped but keeps its rank position
    np.testing.assert_allclose(scores, [1 / 61 + 1 / 62, 1 / 63])
    ids, scores = rrf([[2, 2, 3]])  # a repeat counts once, at its best rank
    np.testing.assert_allclose(scores, [1 / 61, 1 / 63])
    np.testing.assert_array_equal(rrf([[1, 2, 3], [3]], limit=2)[0], [3, 1])
    assert rrf([[1, 2]], limit=0)[0].size == 0
    a = rrf([[5, 6, 7], [7, 6]])
    b = rrf(np.array([[5, 6, 7], [7, 6, -1]]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_empty_inputs() -> None:
    empties: list[list[list[int]]] = [[], [[]], [[], [-1]]]
    for rankings in empties:
        ids, scores = rrf(rankings)
        assert ids.shape == (0,) and scores.shape == (0,)


@pytest.mark.parametrize("k", [0, 0.5, -1, True, float("nan"), "60"])
def test_rejects_bad_k(k: object) -> None:
    with pytest.raises(InvalidRequest, match="k must be"):
        rrf([[1]], k=k)  # type: ignore[arg-type]


def test_rejects_bad_rankings_and_limit() -> None:
    with pytest.raises(InvalidRequest):
        rrf([[1.5, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        rrf([[[1, 2]]])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="limit"):
        rrf([[1]], limit=-1)
