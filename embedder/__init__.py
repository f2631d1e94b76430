"""Text embedders: the :class:`Embedder` interface, backends, model resolution and batching.

Importing this package loads no model and does not import torch; backends are imported when a
model is first loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedder.base import EMBED_KINDS, Embedder, EmbedKind, resolve_device
from embedder.batching import plan_batches
from embedder.registry import (
    KNOWN_MODELS,
    BackendFactory,
    EmbedderPool,
    LoadOptions,
    available_backends,
    get_backend,
    load_embedder,
    register_backend,
    resolve_model_path,
)

if TYPE_CHECKING:
    from embedder.llm.model import LLMEmbedder
    from embedder.sentence_transformers import SentenceTransformerEmbedder

__all__ = [
    "EMBED_KINDS",
    "KNOWN_MODELS",
    "BackendFactory",
    "EmbedKind",
    "Embedder",
    "EmbedderPool",
    "LLMEmbedder",
    "LoadOptions",
    "SentenceTransformerEmbedder",
    "available_backends",
    "get_backend",
    "load_embedder",
    "plan_batches",
    "register_backend",
    "resolve_device",
    "resolve_model_path",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `import embedder` stays free of torch / transformers.
    if name == "SentenceTransformerEmbedder":
        from embedder.sentence_transformers import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder
    if name == "LLMEmbedder":
        from embedder.llm.model import LLMEmbedder

        return LLMEmbedder
    raise AttributeError(f"module 'embedder' has no attribute {name!r}")
