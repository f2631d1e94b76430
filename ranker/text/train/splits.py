"""Query splits that keep training and scoring apart: k folds and a held-out share. Torch-free.

Splits are by *query*, never by (query, document) pair: a model that saw any judgement of a
query would be scored on a query it has learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import InvalidRequest


@dataclass(frozen=True)
class Fold:
    """One fold: the model trained on ``train`` scores ``test`` (disjoint; together all)."""

    index: int
    train: tuple[str, ...]
    test: tuple[str, ...]


def _shuffled(query_ids: Sequence[str], seed: int) -> list[str]:
    ids = list(dict.fromkeys(str(q) for q in query_ids))
    if len(ids) != len(query_ids):
        raise InvalidRequest("Query ids must be unique")
    # Sorted first, so the split depends on the set of ids and the seed, not on file order.
    ids.sort()
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def kfold_split(query_ids: Sequence[str], folds: int, *, seed: int = 0) -> list[Fold]:
    """``folds`` folds of a seeded shuffle of ``query_ids``; test parts differ in size by at
    most one, each query is in exactly one test part and in the other folds' train parts."""
    if folds < 2:
        raise InvalidRequest(f"folds must be >= 2, got {folds}")
    ids = _shuffled(query_ids, seed)
    if len(ids) < folds:
        raise InvalidRequest(f"{len(ids)} queries cannot be split into {folds} folds")
    parts = [ids[i::folds] for i in range(folds)]
    return [
        Fold(
            index=k,
            train=tuple(sorted(q for j, part in enumerate(parts) if j != k for q in part)),
            test=tuple(sorted(parts[k])),
        )
        for k in range(folds)
    ]


def holdout_split(
    query_ids: Sequence[str], fraction: float, *, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a seeded ``fraction`` of the queries (at least one) held out."""
    if not 0.0 < fraction < 1.0:
        raise InvalidRequest(f"The held-out fraction must be in (0, 1), got {fraction}")
    ids = _shuffled(query_ids, seed)
    n_held = max(1, round(len(ids) * fraction))
    if n_held >= len(ids):
        raise InvalidRequest(f"Holding out {fraction} of {len(ids)} queries leaves none to train")
    return sorted(ids[n_held:]), sorted(ids[:n_held])
