"""Reranking documents for a query with a reranker the operator allows.

One use case, :func:`rerank`, answers ``POST /v1/rerank`` and runs the rerank stage of a
search (:func:`service.search.search`): the same allow-list, the same limits
(``QUARRY_RERANK__*``) and the same ordering (score descending, ties in input order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import Forbidden, InvalidRequest, PayloadTooLarge, QuarryError
from core.settings import Settings

if TYPE_CHECKING:
    from service.container import Container

__all__ = [
    "RerankOutcome",
    "RerankerFailed",
    "arerank",
    "check_query",
    "check_reranker_allowed",
    "default_reranker",
    "rerank",
    "resolve_reranker",
]

logger = logging.getLogger(__name__)

#: The prefix of the bi-encoder stand-in's names (``embedder:all-MiniLM-L6-v2``).
EMBEDDER_PREFIX = "embedder:"


class RerankerFailed(QuarryError):
    """A reranker answered something that is not one finite score per document (a fault of
    the model or its code, not of the request); logged where it is raised."""

    code = "reranker_error"
    status = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        logger.error("%s", message)


@dataclass(frozen=True)
class RerankOutcome:
    """The documents' order for the query: ``indices[i]`` (into the input) has ``scores[i]``,
    best first, ties in input order; at most ``top_n`` of them."""

    model: str
    kind: str
    indices: list[int]
    scores: list[float]
    #: How many documents were scored (all of the input, whatever ``top_n``).
    documents: int
    timings: dict[str, float] = field(default_factory=dict)


def default_reranker(settings: Settings) -> str:
    """``QUARRY_RERANK__DEFAULT_MODEL``; when empty, the bi-encoder stand-in over the default
    embedding model."""
    return settings.rerank.default_model or EMBEDDER_PREFIX + settings.embedder.default_model


def _enabled(settings: Settings) -> list[str]:
    from ranker.text import PACKAGED_RERANKERS

    conf = settings.rerank
    names = {default_reranker(settings), *conf.allowed_models, *PACKAGED_RERANKERS}
    return [*sorted(names), f"{EMBEDDER_PREFIX}<an enabled embedding model>"]


def check_reranker_allowed(settings: Settings, name: str) -> None:
    """Refuse reranker names the operator has not enabled (a client never loads any path).

    Enabled: the default (``QUARRY_RERANK__DEFAULT_MODEL``), ``QUARRY_RERANK__ALLOWED_MODELS``,
    the packaged rerankers, and ``embedder:MODEL`` for every embedding model API clients may
    use (:func:`service.embed.check_model_allowed`).
    """
    from ranker.text import PACKAGED_RERANKERS
    from service.embed import check_model_allowed

    allowed = {default_reranker(settings), *settings.rerank.allowed_models}
    if name in allowed or name in PACKAGED_RERANKERS:
        return
    if name.startswith(EMBEDDER_PREFIX):
        embedder = name.removeprefix(EMBEDDER_PREFIX)
        if not embedder.strip():
            raise InvalidRequest(
                f"Reranker {name!r} names no embedding model: use embedder:MODEL, e.g. "
                f"embedder:{settings.embedder.default_model}"
            )
        try:
            check_model_allowed(settings, embedder)
        except Forbidden as exc:
            raise Forbidden(
                f"Reranker {name!r} is not enabled on this server: {exc.message}",
                details={"model": name},
            ) from None
        return
    raise Forbidden(
        f"Reranker {name!r} is not enabled on this server. Enabled rerankers: "
        f"{', '.join(_enabled(settings))}. Operators add more with "
        "QUARRY_RERANK__ALLOWED_MODELS (a JSON list).",
        details={"model": name},
    )


def resolve_reranker(settings: Settings, model: str | None) -> str:
    """The reranker a request means (the default when it names none), checked against the
    allow-list."""
    name = model or default_reranker(settings)
    check_reranker_allowed(settings, name)
    return name


def check_query(settings: Settings, query: str) -> None:
    """A rerank query: text, not only whitespace, within ``QUARRY_RERANK__MAX_QUERY_CHARS``."""
    if not isinstance(query, str):
        raise InvalidRequest("The query must be a string")
    if not query.strip():
        raise InvalidRequest("The query is empty (only whitespace)")
    limit = settings.rerank.max_query_chars
    if len(query) > limit:
        raise InvalidRequest(
            f"The query has {len(query)} characters; rerankers take at most {limit} "
            "(QUARRY_RERANK__MAX_QUERY_CHARS)"
        )


def _check_documents(settings: Settings, documents: Sequence[str], truncate: bool) -> list[str]:
    conf = settings.rerank
    if isinstance(documents, str):
        raise InvalidRequest("documents must be a list of texts, not one text")
    if len(documents) == 0:
        raise InvalidRequest("No documents to rerank")
    if len(documents) > conf.max_documents:
        raise PayloadTooLarge(
            f"{len(documents)} documents in one request; the limit is {conf.max_documents} "
            "(QUARRY_RERANK__MAX_DOCUMENTS)"
        )
    texts: list[str] = []
    for i, text in enumerate(documents):
        if not isinstance(text, str):
            raise InvalidRequest(f"Document {i} is not a text")
        if not text.strip():
            raise InvalidRequest(f"Document {i} is empty (only whitespace)")
        if len(text) > conf.max_document_chars:
            if not truncate:
                raise InvalidRequest(
                    f"Document {i} has {len(text)} characters; rerankers take at most "
                    f"{conf.max_document_chars} (QUARRY_RERANK__MAX_DOCUMENT_CHARS)"
                )
            text = text[: conf.max_document_chars]
        texts.append(text)
    return texts


def rerank(
    c: Container,
    query: str,
    documents: Sequence[str],
    *,
    model: str | None = None,
    top_n: int | None = None,
    truncate: bool = False,
) -> RerankOutcome:
    """Order ``documents`` by relevance to ``query`` with ``model`` (default: the configured
    one), checked against the allow-list; the best ``top_n`` (all when ``None``).

    Limits come from ``c.settings.rerank``: too many documents is :class:`PayloadTooLarge`,
    an empty or too long query or document :class:`InvalidRequest`. With ``truncate`` (the
    search stage, whose documents are stored texts) a too long document is cut to the limit
    instead of refused; rerankers read only their first few hundred tokens anyway.
    """
    name, texts = _admit(c.settings, query, documents, model, top_n, truncate)
    t0 = time.perf_counter()
    raw = c.serving.rerank(name, query, texts)
    return _outcome(c, name, raw, len(texts), top_n, t0)


async def arerank(
    c: Container,
    query: str,
    documents: Sequence[str],
    *,
    model: str | None = None,
    top_n: int | None = None,
) -> RerankOutcome:
    """:func:`rerank` from the event loop (``POST /v1/rerank``): the same checks and answer;
    the scoring is awaited on the reranker's queue instead of holding a thread."""
    name, texts = _admit(c.settings, query, documents, model, top_n, False)
    t0 = time.perf_counter()
    raw = await c.serving.arerank(name, query, texts)
    return _outcome(c, name, raw, len(texts), top_n, t0)


def _admit(
    settings: Settings,
    query: str,
    documents: Sequence[str],
    model: str | None,
    top_n: int | None,
    truncate: bool,
) -> tuple[str, list[str]]:
    """The reranker's name and the documents' texts, once every limit is checked."""
    check_query(settings, query)
    texts = _check_documents(settings, documents, truncate)
    if top_n is not None and (isinstance(top_n, bool) or top_n < 1):
        raise InvalidRequest(f"top_n must be at least 1, not {top_n}")
    return resolve_reranker(settings, model), texts


def _outcome(
    c: Container, name: str, raw: Any, n: int, top_n: int | None, t0: float
) -> RerankOutcome:
    """The checked scores in order, best first (ties in input order), at most ``top_n``."""
    try:
        scores = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RerankerFailed(f"Reranker {name!r} returned unusable scores: {exc}") from exc
    if scores.shape != (n,):
        raise RerankerFailed(
            f"Reranker {name!r} returned {scores.size} scores for {n} documents",
            details={"model": name},
        )
    if not np.isfinite(scores).all():
        raise RerankerFailed(
            f"Reranker {name!r} returned a score that is not a finite number",
            details={"model": name},
        )
    order = np.argsort(-scores, kind="stable")  # ties keep the input order
    if top_n is not None:
        order = order[:top_n]
    timings = {"rerank_ms": round((time.perf_counter() - t0) * 1000.0, 3)}
    reranker = c.rerankers.get(name)  # loaded by now: a dictionary lookup
    return RerankOutcome(
        model=name,
        kind=str(getattr(reranker, "kind", "")),
        indices=order.tolist(),
        scores=scores[order].tolist(),
        documents=n,
        timings=timings,
    )
