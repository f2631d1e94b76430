"""Online model calls through one request queue per model (:mod:`core.batcher`).

:class:`Serving` is what the online paths call: query embedding in search, ``/v1/embed`` and
``/v1/embeddings``, and ``/v1/rerank`` (and the search rerank stage). Embedding requests that
arrive together are merged into one :meth:`Embedder.embed` call, whose token-budget planner
cuts it into forward passes; rerank requests queue on the same kind of batcher, and rerankers that
can (:meth:`ranker.text.engine.ModelReranker.score_many`: cross-encoder, LLM) score the pairs of
several requests in shared batches. With
``QUARRY_SERVING__BATCHING=false`` every call runs on its own, as before the batcher.

Bulk work (ingest, re-embedding, evaluation) calls the engines directly, never a queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from core.batcher import Batcher, BatcherHealth, BatcherLimits, BatchObserver
from core.settings import ServingSettings
from embedder.base import EmbedKind

if TYPE_CHECKING:
    from embedder import Embedder, EmbedderPool
    from ranker.text import RerankerPool, TextReranker

logger = logging.getLogger(__name__)

__all__ = ["EmbedRequest", "Embedded", "Serving", "estimate_tokens"]


def estimate_tokens(texts: Sequence[str], max_tokens: int) -> int:
    """Estimated tokens of ``texts``: characters / 4 + 2 each, at most ``max_tokens`` each.

    Queue limits use this estimate so that nothing is tokenised before a request is admitted.
    """
    return sum(min(max_tokens, len(t) // 4 + 2) for t in texts)


@dataclass(frozen=True)
class EmbedRequest:
    texts: tuple[str, ...]
    kind: EmbedKind = "document"
    normalize: bool = True
    #: Count the texts' tokens (for ``usage``); search does not need them.
    count: bool = True


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray
    #: Tokens the texts occupied (0 when not counted).
    tokens: int


@dataclass(frozen=True)
class _RerankRequest:
    query: str
    documents: tuple[str, ...]


def _normalize(rows: np.ndarray) -> np.ndarray:
    """L2-normalised rows, as ``torch.nn.functional.normalize`` (eps 1e-12)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def embed_now(embedder: Embedder, request: EmbedRequest) -> Embedded:
    """One request on its own (the unbatched path)."""
    texts = list(request.texts)
    vectors = embedder.embed(texts, kind=request.kind, normalize=request.normalize)
    tokens = sum(embedder.count_tokens(texts)) if request.count else 0
    return Embedded(vectors, tokens)


def embed_merged(embedder: Embedder, requests: list[EmbedRequest]) -> list[Embedded]:
    """Several requests in one ``embed`` call per kind, split back in order."""
    out: list[Embedded | None] = [None] * len(requests)
    for kind in dict.fromkeys(r.kind for r in requests):
        members = [i for i, r in enumerate(requests) if r.kind == kind]
        texts = [t for i in members for t in requests[i].texts]
        vectors = embedder.embed(texts, kind=kind, normalize=False)
        counted = [t for i in members if requests[i].count for t in requests[i].texts]
        counts = iter(embedder.count_tokens(counted)) if counted else iter(())
        start = 0
        for i in members:
            r = requests[i]
            rows = vectors[start : start + len(r.texts)]
            start += len(r.texts)
            tokens = sum(next(counts) for _ in r.texts) if r.count else 0
            out[i] = Embedded(_normalize(rows) if r.normalize else rows, tokens)
    return [e for e in out if e is not None]


class _Observers:
    """Forwards batcher events to whatever observer the API installs (none by default)."""

    def __init__(self) -> None:
        self.target: BatchObserver | None = None

    def queue_depth(self, name: str, items: int, cost: int) -> None:
        if self.target is not None:
            self.target.queue_depth(name, items, cost)

    def batch_done(self, name: str, items: int, cost: int, seconds: float) -> None:
        if self.target is not None:
            self.target.batch_done(name, items, cost, seconds)

    def waited(self, name: str, seconds: float) -> None:
        if self.target is not None:
            self.target.waited(name, seconds)

    def rejected(self, name: str, reason: str) -> None:
        if self.target is not None:
            self.target.rejected(name, reason)


class Serving:
    """The online model queues of one process, one per model, created on first use."""

    def __init__(
        self, settings: ServingSettings, embedders: EmbedderPool, rerankers: RerankerPool
    ) -> None:
        self.settings = settings
        self._embedders = embedders
        self._rerankers = rerankers
        self._observers = _Observers()
        self._batchers: dict[str, Batcher[Any, Any]] = {}
        self._lock = threading.Lock()

    @property
    def batching(self) -> bool:
        return self.settings.batching

    def observe(self, observer: BatchObserver | None) -> None:
        """Send queue metrics to ``observer`` (the API's Prometheus metrics)."""
        self._observers.target = observer

    def limits(self, device: str | None = None) -> BatcherLimits:
        """The queue limits from the settings; ``device`` (the model's; None: CUDA if there
        is one) picks the default number of workers."""
        s = self.settings
        workers = s.workers
        if workers is None:
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            workers = 2 if device.startswith("cuda") else 1
        return BatcherLimits(
            max_batch_cost=s.batch_tokens,
            max_batch_items=s.max_batch_requests,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_queue_items=s.max_queue_requests,
            max_queue_cost=s.max_queue_tokens,
            timeout_s=s.timeout_s,
            retry_after_s=float(s.retry_after_s),
            workers=workers,
        )

    # ------------------------------------------------------------------------- embedding

    def embed(self, model: str, request: EmbedRequest) -> Embedded:
        """Embed through the model's queue (blocking; call from a thread)."""
        embedder = self._embedders.get(model)
        if not self.batching:
            return embed_now(embedder, request)
        result: Embedded = self._embed_batcher(model, embedder).call(request)
        return result

    def embed_batch(self, model: str, request: EmbedRequest) -> Embedded:
        """Embed a batch already formed by another queue (the search queue) at once, without
        queueing it again: admitted once, it is not refused a second time."""
        return embed_now(self._embedders.get(model), request)

    async def aembed(self, model: str, request: EmbedRequest) -> Embedded:
        """Embed through the model's queue without blocking the event loop."""
        if not self.batching or f"embed:{model}" not in self._batchers:
            # Loading a model (first use) or the unbatched path runs on a thread.
            embedder = await anyio.to_thread.run_sync(self._embedders.get, model)
            if not self.batching:
                return await anyio.to_thread.run_sync(embed_now, embedder, request)
        else:
            embedder = self._embedders.get(model)  # loaded: a dictionary lookup
        result: Embedded = await self._embed_batcher(model, embedder).acall(request)
        return result

    def _embed_batcher(self, model: str, embedder: Embedder) -> Batcher[EmbedRequest, Embedded]:
        key = f"embed:{model}"
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                max_len = embedder.max_seq_length
                batcher = Batcher(
                    key,
                    lambda reqs: embed_merged(embedder, reqs),
                    cost=lambda r: estimate_tokens(r.texts, max_len),
                    limits=self.limits(getattr(embedder, "device", None)),
                    observer=self._observers,
                )
                self._batchers[key] = batcher
                logger.info("request batching on for %s", key)
        return batcher

    # ------------------------------------------------------------------------- reranking

    def rerank(self, model: str, query: str, documents: Sequence[str]) -> np.ndarray:
        """Scores of ``documents`` for ``query`` through the reranker's queue (blocking)."""
        reranker = self._rerankers.get(model)
        if not self.batching:
            return reranker.score(query, list(documents))
        request = _RerankRequest(query, tuple(documents))
        scores: np.ndarray = self._rerank_batcher(model, reranker).call(request)
        return scores

    async def arerank(self, model: str, query: str, documents: Sequence[str]) -> np.ndarray:
        """:meth:`rerank` without blocking the event loop: once the reranker's queue exists,
        the request goes from the loop to the queue's worker and back, with no thread of its
        own in between."""
        if not self.batching or f"rerank:{model}" not in self._batchers:
            # Loading a model (first use) or the unbatched path runs on a thread.
            reranker = await anyio.to_thread.run_sync(self._rerankers.get, model)
            if not self.batching:
                return await anyio.to_thread.run_sync(reranker.score, query, list(documents))
        else:
            reranker = self._rerankers.get(model)  # loaded: a dictionary lookup
        request = _RerankRequest(query, tuple(documents))
        scores: np.ndarray = await self._rerank_batcher(model, reranker).acall(request)
        return scores

    def _rerank_batcher(
        self, model: str, reranker: TextReranker
    ) -> Batcher[_RerankRequest, np.ndarray]:
        key = f"rerank:{model}"
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:

                def run(reqs: list[_RerankRequest]) -> list[np.ndarray]:
                    many = getattr(reranker, "score_many", None)
                    if many is not None and len(reqs) > 1:
                        scored: list[np.ndarray] = many(
                            [r.query for r in reqs], [list(r.documents) for r in reqs]
                        )
                        return scored
                    return [reranker.score(r.query, list(r.documents)) for r in reqs]

                batcher = Batcher(
                    key,
                    run,
                    cost=lambda r: (
                        estimate_tokens((r.query,), 512) * len(r.documents)
                        + estimate_tokens(r.documents, 512)
                    ),
                    limits=replace(
                        self.limits(getattr(reranker, "device", None)),
                        max_batch_cost=self.settings.rerank_batch_tokens,
                    ),
                    observer=self._observers,
                )
                self._batchers[key] = batcher
        return batcher

    # ------------------------------------------------------------------------- lifecycle

    # ------------------------------------------------------------------------- other queues

    def queue(
        self, key: str, run: Callable[[list[Any]], Sequence[Any]], cost: Callable[[Any], int]
    ) -> Batcher[Any, Any]:
        """The queue named ``key`` (created with the serving limits on first use): for work
        other than a model's, such as whole dense searches merged per collection."""
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = Batcher(
                    key, run, cost=cost, limits=self.limits(), observer=self._observers
                )
                self._batchers[key] = batcher
        return batcher

    def health(self) -> dict[str, BatcherHealth]:
        """Each queue's health (wedged, out of memory) by name."""
        with self._lock:
            batchers = list(self._batchers.values())
        return {b.name: b.health() for b in batchers}

    def close(self) -> None:
        with self._lock:
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for b in batchers:
            b.close()
