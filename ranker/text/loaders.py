"""Loaders the registry calls for Quarry's kinds and packaged names (imports torch).

:mod:`ranker.text.registry` registers these lazily, so ``import ranker.text`` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ranker.text.base import TextReranker
from ranker.text.engine import ModelReranker
from ranker.text.model import RerankModel, create_model, load_model
from ranker.text.registry import LoadOptions


def serve(model: RerankModel, name: str, options: LoadOptions) -> ModelReranker:
    """Wrap ``model`` in the serving engine of its kind."""
    if model.kind == "late-interaction":
        from ranker.text.late_interaction import LateInteractionReranker

        return LateInteractionReranker(model, name, options)
    return ModelReranker(model, name, options)


def load_directory(path: Path, name: str, options: LoadOptions) -> TextReranker:
    """A reranker directory of any Quarry kind, or a Hugging Face cross-encoder."""
    return serve(load_model(path), name, options)


def zero_shot(
    kind: str,
    backbone: str,
    name: str,
    options: LoadOptions,
    kind_options: dict[str, Any] | None = None,
) -> TextReranker:
    """An untrained ``kind`` model over ``backbone`` with ``kind_options`` (meaningful for the
    LLM kind only)."""
    return serve(create_model(kind, backbone, kind_options), name, options)
