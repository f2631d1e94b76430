"""Training rerankers: examples, losses, the trainer, held-out and k-fold query splits.

``quarry train reranker`` (:mod:`cli.train`) trains any kind of :mod:`ranker.text` on
(query, positive, negatives) examples — a BEIR split with BM25 hard negatives, or a TREC
candidates file with qrels (:mod:`service.training`) — and writes a directory that
:func:`ranker.text.load_reranker` loads by path. With ``--folds`` it cross-validates by query
(:mod:`ranker.text.train.kfold`).

Importing this package imports neither torch nor the BM25 index: the names below load on first
access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from ranker.text.train.kfold import (
        FoldsPlan,
        KFoldResult,
        score_candidates,
        score_kfold,
        train_kfold,
        write_run,
    )
    from ranker.text.train.loss import bce_loss, listwise_loss, rerank_loss
    from ranker.text.train.splits import Fold, holdout_split, kfold_split
    from ranker.text.train.trainer import (
        KIND_DEFAULTS,
        RerankerTrainer,
        RerankTrainConfig,
        train_reranker,
    )

__all__ = [
    "KIND_DEFAULTS",
    "Fold",
    "FoldsPlan",
    "KFoldResult",
    "RerankTrainConfig",
    "RerankerTrainer",
    "bce_loss",
    "holdout_split",
    "kfold_split",
    "listwise_loss",
    "rerank_loss",
    "score_candidates",
    "score_kfold",
    "train_kfold",
    "train_reranker",
    "write_run",
]

_LAZY: dict[str, str] = {
    "FoldsPlan": "ranker.text.train.kfold",
    "KFoldResult": "ranker.text.train.kfold",
    "score_candidates": "ranker.text.train.kfold",
    "score_kfold": "ranker.text.train.kfold",
    "train_kfold": "ranker.text.train.kfold",
    "write_run": "ranker.text.train.kfold",
    "bce_loss": "ranker.text.train.loss",
    "listwise_loss": "ranker.text.train.loss",
    "rerank_loss": "ranker.text.train.loss",
    "Fold": "ranker.text.train.splits",
    "holdout_split": "ranker.text.train.splits",
    "kfold_split": "ranker.text.train.splits",
    "KIND_DEFAULTS": "ranker.text.train.trainer",
    "RerankTrainConfig": "ranker.text.train.trainer",
    "RerankerTrainer": "ranker.text.train.trainer",
    "train_reranker": "ranker.text.train.trainer",
}

__getattr__ = lazy_exports(__name__, _LAZY)
