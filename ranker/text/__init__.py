"""Text rerankers: one interface (:class:`TextReranker`), kinds registered by name, a pool.

Importing this package loads no model and does not import torch.
"""

from __future__ import annotations

from ranker.text.base import TextReranker
from ranker.text.registry import (
    KINDS,
    PACKAGED_RERANKERS,
    LoadOptions,
    RerankerPool,
    load_reranker,
    register_kind,
    register_packaged,
)

__all__ = [
    "KINDS",
    "PACKAGED_RERANKERS",
    "LoadOptions",
    "RerankerPool",
    "TextReranker",
    "load_reranker",
    "register_kind",
    "register_packaged",
]
