"""Embedding texts with a model the operator allows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.errors import Forbidden
from core.settings import Settings
from embedder.base import EmbedKind, check_kind
from service.serving import EmbedRequest

if TYPE_CHECKING:
    from service.container import Container

__all__ = ["EmbedKind", "Embedded", "aembed", "check_model_allowed", "embed"]


def check_model_allowed(settings: Settings, name: str) -> None:
    """Refuse model names the operator has not allowed (a client never loads any path).

    Packaged models (MiniLM, SmolLM2 with any preset suffix) and the default are always
    allowed; anything else must be listed in ``QUARRY_EMBEDDER__ALLOWED_MODELS``.
    """
    from embedder import is_packaged_model, packaged_model_names

    allowed = {settings.embedder.default_model, *settings.embedder.allowed_models}
    # A packaged LLM with an unknown preset passes here and fails to load with the list
    # of valid presets, which is the more useful message.
    if name in allowed or is_packaged_model(name) or is_packaged_model(name.split(":", 1)[0]):
        return
    raise Forbidden(
        f"Model {name!r} is not enabled on this server. Enabled models: "
        f"{', '.join(sorted(allowed | set(packaged_model_names())))}. Operators add more with "
        "QUARRY_EMBEDDER__ALLOWED_MODELS (a JSON list)."
    )


@dataclass
class Embedded:
    model: str
    vectors: np.ndarray
    tokens: int


def _request(
    c: Container, texts: Sequence[str], model: str | None, kind: EmbedKind, normalize: bool
) -> tuple[str, EmbedRequest]:
    name = model or c.settings.embedder.default_model
    check_model_allowed(c.settings, name)
    check_kind(kind)
    return name, EmbedRequest(tuple(texts), kind=kind, normalize=normalize)


def embed(
    c: Container,
    texts: Sequence[str],
    *,
    model: str | None = None,
    kind: EmbedKind = "document",
    normalize: bool = True,
) -> Embedded:
    """Embed ``texts`` with ``model`` (default: the configured one), checked against the
    allow-list, through the model's request queue (blocking: call from a thread)."""
    name, request = _request(c, texts, model, kind, normalize)
    out = c.serving.embed(name, request)
    return Embedded(name, out.vectors, out.tokens)


async def aembed(
    c: Container,
    texts: Sequence[str],
    *,
    model: str | None = None,
    kind: EmbedKind = "document",
    normalize: bool = True,
) -> Embedded:
    """:func:`embed` for the event loop: waits on the queue without blocking it."""
    name, request = _request(c, texts, model, kind, normalize)
    out = await c.serving.aembed(name, request)
    return Embedded(name, out.vectors, out.tokens)
