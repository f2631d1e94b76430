"""Contrastive fine-tuning of LLM embedders: data, InfoNCE loss, GradCache trainer, CLI.

``quarry train embedder`` (:mod:`cli.train`) trains one of the designs of ``docs/methods.md``
on ``{query, positive, negatives}`` examples (a JSON-lines file, or a BEIR split with BM25
hard negatives from :mod:`service.training`) and writes a model directory that
:func:`embedder.load_embedder` loads by path.

Importing this package imports neither torch nor the BM25 index: the names below load on first
access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from embedder.train.data import (
        TrainExample,
        read_examples,
        write_examples,
    )
    from embedder.train.loss import info_nce_loss
    from embedder.train.trainer import (
        EmbedderTrainer,
        TrainConfig,
        TrainResult,
        latest_checkpoint,
        train_embedder,
    )

__all__ = [
    "EmbedderTrainer",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "info_nce_loss",
    "latest_checkpoint",
    "read_examples",
    "train_embedder",
    "write_examples",
]

_LAZY: dict[str, str] = {
    "TrainExample": "embedder.train.data",
    "read_examples": "embedder.train.data",
    "write_examples": "embedder.train.data",
    "info_nce_loss": "embedder.train.loss",
    "EmbedderTrainer": "embedder.train.trainer",
    "TrainConfig": "embedder.train.trainer",
    "TrainResult": "embedder.train.trainer",
    "latest_checkpoint": "embedder.train.trainer",
    "train_embedder": "embedder.train.trainer",
}


__getattr__ = lazy_exports(__name__, _LAZY)
