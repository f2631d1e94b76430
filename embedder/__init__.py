"""Text embedders: the :class:`Embedder` interface, backends, model resolution and batching.

Packaged models (weights shipped in pip packages: MiniLM, SmolLM2) are listed once, in
:data:`embedder.packaged.PACKAGED_MODELS`; :func:`is_packaged_model` and
:func:`packaged_model_names` answer questions about names without loading anything.

Importing this package loads no model and does not import torch; backends are imported when a
model is first loaded, and the backend classes below resolve on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports
from embedder.base import EMBED_KINDS, Embedder, EmbedKind, resolve_device
from embedder.batching import plan_batches
from embedder.packaged import PACKAGED_MODELS, PackagedKind, PackagedModel
from embedder.registry import (
    KNOWN_MODELS,
    BackendFactory,
    EmbedderPool,
    LoadOptions,
    available_backends,
    get_backend,
    is_packaged_model,
    load_embedder,
    packaged_model_names,
    register_backend,
    resolve_model_path,
)

if TYPE_CHECKING:
    from embedder.llm.model import LLMEmbedder
    from embedder.sentence_transformers import SentenceTransformerEmbedder

__all__ = [
    "EMBED_KINDS",
    "KNOWN_MODELS",
    "PACKAGED_MODELS",
    "BackendFactory",
    "EmbedKind",
    "Embedder",
    "EmbedderPool",
    "LLMEmbedder",
    "LoadOptions",
    "PackagedKind",
    "PackagedModel",
    "SentenceTransformerEmbedder",
    "available_backends",
    "get_backend",
    "is_packaged_model",
    "load_embedder",
    "packaged_model_names",
    "plan_batches",
    "register_backend",
    "resolve_device",
    "resolve_model_path",
]

# Imported on first access so that `import embedder` stays free of torch / transformers.
_LAZY: dict[str, str] = {
    "LLMEmbedder": "embedder.llm.model",
    "SentenceTransformerEmbedder": "embedder.sentence_transformers",
}

__getattr__ = lazy_exports(__name__, _LAZY)
