"""Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009) of ranked id lists."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from core.errors import InvalidRequest

logger = logging.getLogger(__name__)

DEFAULT_RRF_K = 60

__all__ = ["DEFAULT_RRF_K", "rrf"]


def _ranking(ranking: object, i: int) -> np.ndarray:
    arr = np.asarray(ranking)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidRequest(
            f"rankings[{i}] must be a 1-D sequence of integer ids, got shape {arr.shape} "
            f"of {arr.dtype}"
        )
    return arr.astype(np.int64, copy=False)


def rrf(
    rankings: Sequence[Sequence[int]] | Sequence[np.ndarray] | np.ndarray,
    *,
    k: float = DEFAULT_RRF_K,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked id lists (best first) by reciprocal rank fusion.

    ``rankings`` is a sequence of 1-D id sequences (or a 2-D array, one ranking per row),
    such as the ids of :func:`~indexer.search.search_segments` for one query and of
    :func:`~indexer.lexical.search_lexical`.

    ``score(d) = sum over rankings r containing d of 1 / (k + rank_r(d))`` with 1-based
    ranks. Returns ``(ids (m,) int64, scores (m,) float64)`` best first, at most ``limit``
    (all fused ids if ``None``). Ties are broken by the best rank ``d`` has in any single
    ranking, then by ascending id, so the order is deterministic. Negative ids (the ``-1``
    padding of :func:`~indexer.search.search_segments`) are skipped but keep their rank
    position; an id repeated within one ranking counts once, at its best rank.
    """
    if isinstance(k, bool) or not isinstance(k, int | float) or not np.isfinite(k) or k < 1:
        raise InvalidRequest(f"k must be a number >= 1, got {k!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise InvalidRequest(f"limit must be a non-negative integer or None, got {limit!r}")
    ids_parts: list[np.ndarray] = []
    rank_parts: list[np.ndarray] = []
    for i, ranking in enumerate(rankings):
        arr = _ranking(ranking, i)
        ranks = np.arange(1, arr.size + 1, dtype=np.int64)
        valid = arr >= 0
        arr, ranks = arr[valid], ranks[valid]
        # First occurrence of each id is its best rank in this ranking.
        _, first = np.unique(arr, return_index=True)
        ids_parts.append(arr[first])
        rank_parts.append(ranks[first])
    empty = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    if not ids_parts:
        return empty
    all_ids = np.concatenate(ids_parts)
    all_ranks = np.concatenate(rank_parts)
    if all_ids.size == 0:
        return empty
    uniq, inv = np.unique(all_ids, return_inverse=True)
    # Add each id's terms in a fixed order (by rank): equal rank multisets give bit-equal sums.
    order = np.lexsort((all_ranks, inv))
    inv, all_ranks = inv[order], all_ranks[order]
    scores = np.bincount(inv, weights=1.0 / (k + all_ranks.astype(np.float64)), minlength=uniq.size)
    best = np.full(uniq.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, inv, all_ranks)
    top = np.lexsort((uniq, best, -scores))
    if limit is not None:
        top = top[:limit]
    return uniq[top], scores[top]
