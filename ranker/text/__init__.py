"""Text rerankers: one interface (:class:`TextReranker`), kinds registered by name, a pool.

Kinds: ``cross-encoder``, ``late-interaction`` (ColBERT), ``knrm`` (K-NRM), ``llm``
(pointwise: yes/no log-odds or query likelihood), ``dense`` (a trainable bi-encoder),
``fusion`` (weighted per-query-normalised scores of other rerankers,
:mod:`ranker.text.fusion`) and the ``embedder:MODEL`` bi-encoder stand-in; packaged names:
``quarry-li-cranfield`` (shipped weights), ``smollm2-pointwise`` and ``smollm2-likelihood``
(zero-shot). Methods and numbers: ``docs/methods.md`` ("Rerankers"); training:
:mod:`ranker.text.train`.

Importing this package loads no model and does not import torch.
"""

from __future__ import annotations

from ranker.text.base import TextReranker
from ranker.text.config import MODEL_KINDS, RerankerConfig
from ranker.text.registry import (
    CONFIG_FILE,
    KINDS,
    PACKAGED_RERANKERS,
    SHIPPED_RERANKERS,
    LoadOptions,
    RerankerPool,
    load_reranker,
    register_kind,
    register_packaged,
    valid_names,
)

__all__ = [
    "CONFIG_FILE",
    "KINDS",
    "MODEL_KINDS",
    "PACKAGED_RERANKERS",
    "SHIPPED_RERANKERS",
    "LoadOptions",
    "RerankerConfig",
    "RerankerPool",
    "TextReranker",
    "load_reranker",
    "register_kind",
    "register_packaged",
    "valid_names",
]
