"""LLM-based embedders: decoder (or encoder) backbones, causal or bidirectional attention,
pooling heads (mean, cls, eos, trainable cross-attention, MLTP, NV-Embed latent attention).

Names such as ``smollm2``, ``smollm2:design5`` or a directory holding ``quarry_embedder.json``
load through :func:`embedder.load_embedder` / :class:`embedder.EmbedderPool` (backend ``"llm"``).

Importing this package does not import torch: configuration and name resolution are torch-free;
the model classes load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports
from embedder.llm.config import (
    ATTENTION_MODES,
    CONFIG_NAME,
    DEFAULT_PRESET,
    PRESET_HEAD_SEED,
    PRESETS,
    AttentionMode,
    BackboneSource,
    EmbedderConfig,
    Preset,
    get_preset,
)
from embedder.llm.names import LLMTarget, resolve_llm

if TYPE_CHECKING:
    from embedder.llm.backbone import Backbone, load_backbone, tiny_backbone, tiny_tokenizer
    from embedder.llm.model import LLMEmbedder, LLMEmbeddingModel
    from embedder.llm.pooling import POOLING_HEADS, PoolingHead, build_pooling, pooling_modes

__all__ = [
    "ATTENTION_MODES",
    "CONFIG_NAME",
    "DEFAULT_PRESET",
    "POOLING_HEADS",
    "PRESETS",
    "PRESET_HEAD_SEED",
    "AttentionMode",
    "Backbone",
    "BackboneSource",
    "EmbedderConfig",
    "LLMEmbedder",
    "LLMEmbeddingModel",
    "LLMTarget",
    "PoolingHead",
    "Preset",
    "build_pooling",
    "get_preset",
    "load_backbone",
    "pooling_modes",
    "resolve_llm",
    "tiny_backbone",
    "tiny_tokenizer",
]

_LAZY: dict[str, str] = {
    "Backbone": "embedder.llm.backbone",
    "load_backbone": "embedder.llm.backbone",
    "tiny_backbone": "embedder.llm.backbone",
    "tiny_tokenizer": "embedder.llm.backbone",
    "LLMEmbedder": "embedder.llm.model",
    "LLMEmbeddingModel": "embedder.llm.model",
    "POOLING_HEADS": "embedder.llm.pooling",
    "PoolingHead": "embedder.llm.pooling",
    "build_pooling": "embedder.llm.pooling",
    "pooling_modes": "embedder.llm.pooling",
}


__getattr__ = lazy_exports(__name__, _LAZY)
