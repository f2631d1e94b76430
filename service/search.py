"""Search over a collection: dense (FAISS), lexical (BM25) or hybrid (reciprocal rank fusion).

The manifest is read once; both indexes are fanned out over the same live segments with
the same tombstones and metadata allow-list; the documents are fetched last. Segment files
are verified against the manifest's checksums when they are loaded: a corrupt segment is a
:class:`~core.errors.SegmentCorrupt` (5xx) naming the collection, never silently fewer hits.

:func:`search` is the use case: the first stage (:class:`Searcher`) and, when asked, a rerank
stage (:class:`RerankStage`) that reorders the first stage's candidates with a text reranker
(:func:`service.rerank.rerank`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from core.collections import get_collection
from core.db import session_scope
from core.documents import documents_by_ids, filtered_ids
from core.errors import InvalidRequest, QuarryError, SegmentCorrupt
from core.models import Collection
from indexer.cache import SegmentCache
from indexer.fusion import rrf
from indexer.lexical import search_lexical
from indexer.manifest import active_segments, tombstone_ids
from indexer.search import search_segments
from indexer.segment import LoadedSegment
from service.rerank import check_query, resolve_reranker
from service.rerank import rerank as rerank_texts
from service.serving import EmbedRequest, Serving, estimate_tokens

if TYPE_CHECKING:
    from service.container import Container

logger = logging.getLogger(__name__)


@dataclass
class Hit:
    external_id: str
    score: float
    text: str
    metadata: dict[str, Any]
    #: With a rerank stage: the first stage's score (``score`` is then the reranker's).
    first_stage_score: float | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    #: The reranker that ordered the hits (``None`` without a rerank stage).
    reranker: str | None = None


#: Candidates the rerank stage takes from the first stage unless told otherwise (capped by
#: ``QUARRY_RERANK__MAX_DOCUMENTS``).
DEFAULT_RERANK_CANDIDATES = 100


@dataclass(frozen=True)
class RerankStage:
    """Rerank the first stage's top ``candidates`` with ``model`` (default: the configured
    reranker); ``None`` candidates is :data:`DEFAULT_RERANK_CANDIDATES` or the limit."""

    model: str | None = None
    candidates: int | None = None


@dataclass(frozen=True)
class _DenseQuery:
    """One plain dense search waiting in the search queue."""

    collection: str
    query: str
    k: int


@dataclass(frozen=True)
class _Manifest:
    """What a search reads of a collection's manifest, at one version."""

    version: int
    names: list[str]
    checksums: dict[str, Any]
    tombstones: np.ndarray


SearchMode = Literal["dense", "lexical", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("dense", "lexical", "hybrid")
HYBRID_DEPTH = 100  # candidates taken from each side before fusion


class Searcher:
    """Answers ``POST /v1/search`` and ``quarry search`` through the same code path."""

    def __init__(
        self, sessions: sessionmaker[Session], serving: Serving, cache: SegmentCache
    ) -> None:
        self._sessions = sessions
        self._serving = serving
        self._cache = cache
        self._manifests: dict[int, _Manifest] = {}

    def _manifest(self, s: Session, coll: Collection) -> _Manifest:
        """The collection's live segments and tombstones at its current manifest version:
        read once per version (every change to either bumps it in the same transaction)."""
        known = self._manifests.get(coll.id)
        if known is not None and known.version == coll.manifest_version:
            return known
        segments = active_segments(s, coll.id)
        manifest = _Manifest(
            coll.manifest_version,
            [seg.name for seg in segments],
            {seg.name: seg.checksums for seg in segments},
            tombstone_ids(s, coll.id),
        )
        self._manifests[coll.id] = manifest
        return manifest

    def _load(self, collection: str, cid: int, manifest: _Manifest) -> list[LoadedSegment]:
        try:
            return self._cache.get(
                cid, manifest.version, manifest.names, checksums=manifest.checksums
            )
        except SegmentCorrupt as exc:
            exc.details = {**exc.details, "collection": collection}
            exc.message = f"Collection {collection!r} is degraded: {exc.message}"
            raise

    # --- dense searches merged across concurrent requests ---------------------------------

    def _dense_batch(self, queries: list[_DenseQuery]) -> list[SearchResult | BaseException]:
        """The search queue's ``run``: the queued plain dense searches, one merged search
        per collection (a collection's error goes to each of its own queries only)."""
        out: list[SearchResult | BaseException] = [QuarryError("not searched")] * len(queries)
        for name in dict.fromkeys(q.collection for q in queries):
            members = [i for i, q in enumerate(queries) if q.collection == name]
            try:
                results: Sequence[SearchResult | BaseException] = self._dense_group(
                    name, [queries[i] for i in members]
                )
            except QuarryError as exc:
                results = [exc] * len(members)
            for i, r in zip(members, results, strict=True):
                out[i] = r
        return out

    def _dense_group(self, collection: str, queries: list[_DenseQuery]) -> list[SearchResult]:
        """Dense top-k of several queries of one collection: one manifest read, one embedding
        call, one FAISS search per segment and one document fetch for all of them (the
        timings are the group's)."""
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        with session_scope(self._sessions) as s:
            coll = get_collection(s, collection)
            manifest = self._manifest(s, coll)
            cid, metric, model = coll.id, coll.metric, coll.embedder
        timings["manifest_ms"] = _ms(t_all)
        t = time.perf_counter()
        loaded = self._load(collection, cid, manifest)
        timings["load_ms"] = _ms(t)
        t = time.perf_counter()
        request = EmbedRequest(
            tuple(q.query for q in queries), kind="query", normalize=False, count=False
        )
        qvecs = self._serving.embed_batch(model, request).vectors
        timings["embed_ms"] = _ms(t)
        t = time.perf_counter()
        scores, ids = search_segments(
            loaded,
            qvecs.astype(np.float32, copy=False),
            max(q.k for q in queries),
            metric=metric,  # type: ignore[arg-type]
            exclude_ids=manifest.tombstones if len(manifest.tombstones) else None,
        )
        timings["dense_ms"] = _ms(t)
        t = time.perf_counter()
        wanted = {int(i) for row in ids for i in row if i >= 0}
        with session_scope(self._sessions) as s:
            docs = documents_by_ids(s, sorted(wanted))
        timings["fetch_ms"] = _ms(t)
        timings["total_ms"] = _ms(t_all)
        results = []
        for q, row_ids, row_scores in zip(queries, ids, scores, strict=True):
            hits = [
                Hit(docs[i].external_id, float(sc), docs[i].text, dict(docs[i].meta or {}))
                for i, sc in zip(row_ids[: q.k].tolist(), row_scores[: q.k].tolist(), strict=True)
                if i >= 0 and i in docs  # deleted after the manifest read: never shown
            ]
            results.append(SearchResult(hits, dict(timings)))
        return results

    def search(
        self,
        collection: str,
        query: str,
        *,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        mode: SearchMode = "dense",
        rrf_k: int = 60,
    ) -> SearchResult:
        """Top-``k`` documents for ``query``: dense (FAISS), lexical (BM25) or hybrid (RRF)."""
        if not query.strip():
            raise InvalidRequest("The query is empty (only whitespace)")
        if mode not in SEARCH_MODES:
            raise InvalidRequest(f"Invalid mode {mode!r}. Valid modes: {', '.join(SEARCH_MODES)}")
        if mode == "dense" and not filters and self._serving.batching:
            result: SearchResult = self._serving.queue(
                "search", self._dense_batch, lambda q: estimate_tokens((q.query,), 512)
            ).call(_DenseQuery(collection, query, k))
            return result
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        with session_scope(self._sessions) as s:
            coll = get_collection(s, collection)
            if mode != "dense" and not coll.lexical:
                raise InvalidRequest(
                    f"Collection {collection!r} keeps no lexical index (created with "
                    "lexical=false); use mode 'dense'"
                )
            manifest = self._manifest(s, coll)
            allow = filtered_ids(s, coll.id, filters) if filters else None
            cid, metric, model = coll.id, coll.metric, coll.embedder
            bm25_k1, bm25_b = coll.bm25_k1, coll.bm25_b
        tombstones = manifest.tombstones
        timings["manifest_ms"] = _ms(t_all)
        if allow is not None and len(allow) == 0:
            timings["total_ms"] = _ms(t_all)
            return SearchResult([], timings)

        t = time.perf_counter()
        loaded = self._load(collection, cid, manifest)
        timings["load_ms"] = _ms(t)
        exclude = tombstones if len(tombstones) else None
        depth = max(k, HYBRID_DEPTH) if mode == "hybrid" else k

        ranked: list[tuple[int, float]]
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if mode in ("dense", "hybrid"):
            t = time.perf_counter()
            request = EmbedRequest((query,), kind="query", normalize=False, count=False)
            qvec = self._serving.embed(model, request).vectors
            timings["embed_ms"] = _ms(t)
            t = time.perf_counter()
            scores, ids = search_segments(
                loaded,
                qvec.astype(np.float32, copy=False),
                depth,
                metric=metric,  # type: ignore[arg-type]
                exclude_ids=exclude,
                allow_ids=allow,
            )
            timings["dense_ms"] = _ms(t)
            dense = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0], strict=True) if i >= 0]
        if mode in ("lexical", "hybrid"):
            t = time.perf_counter()
            lex = [seg.lexical for seg in loaded if seg.lexical is not None]
            lscores, lids = search_lexical(
                lex, query, depth, exclude_ids=exclude, allow_ids=allow, k1=bm25_k1, b=bm25_b
            )
            timings["lexical_ms"] = _ms(t)
            lexical = [(int(i), float(sc)) for i, sc in zip(lids, lscores, strict=True) if i >= 0]
        if mode == "hybrid":
            t = time.perf_counter()
            fused_ids, fused_scores = rrf(
                [
                    np.asarray([i for i, _ in dense], dtype=np.int64),
                    np.asarray([i for i, _ in lexical], dtype=np.int64),
                ],
                k=rrf_k,
                limit=k,
            )
            ranked = [(int(i), float(sc)) for i, sc in zip(fused_ids, fused_scores, strict=True)]
            timings["fusion_ms"] = _ms(t)
        else:
            ranked = (dense or lexical)[:k]

        t = time.perf_counter()
        with session_scope(self._sessions) as s:
            docs = documents_by_ids(s, [i for i, _ in ranked])
            hits = [
                Hit(docs[i].external_id, score, docs[i].text, dict(docs[i].meta or {}))
                for i, score in ranked
                if i in docs  # deleted after the manifest read: drop, never show stale rows
            ]
        timings["fetch_ms"] = _ms(t)
        timings["total_ms"] = _ms(t_all)
        return SearchResult(hits, timings)


def search(
    c: Container,
    collection: str,
    query: str,
    *,
    k: int = 10,
    filters: dict[str, Any] | None = None,
    mode: SearchMode = "dense",
    rrf_k: int = 60,
    rerank: RerankStage | None = None,
) -> SearchResult:
    """Top-``k`` documents for ``query``; with ``rerank``, the first stage (``mode``) fetches
    ``max(k, candidates)`` hits, the reranker reorders them by (query, text) and the best ``k``
    come back with the reranker's score as ``score`` and the first stage's as
    ``first_stage_score``; ``timings`` gains ``rerank_ms``."""
    if rerank is None:
        return c.searcher.search(collection, query, k=k, filters=filters, mode=mode, rrf_k=rrf_k)
    # Refuse a bad stage before any work: the reranker's name, the query, the candidates.
    settings = c.settings
    name = resolve_reranker(settings, rerank.model)
    check_query(settings, query)
    limit = settings.rerank.max_documents
    candidates = rerank.candidates
    if candidates is None:
        candidates = min(DEFAULT_RERANK_CANDIDATES, limit)
    elif isinstance(candidates, bool) or not 1 <= candidates <= limit:
        raise InvalidRequest(
            f"rerank.candidates must be between 1 and {limit} (QUARRY_RERANK__MAX_DOCUMENTS), "
            f"not {candidates}"
        )
    t_all = time.perf_counter()
    first = c.searcher.search(
        collection, query, k=max(k, candidates), filters=filters, mode=mode, rrf_k=rrf_k
    )
    timings = {key: ms for key, ms in first.timings.items() if key != "total_ms"}
    hits: list[Hit] = []
    if first.hits:
        out = rerank_texts(
            c, query, [h.text for h in first.hits], model=name, top_n=k, truncate=True
        )
        timings.update(out.timings)
        for i, score in zip(out.indices, out.scores, strict=True):
            hit = first.hits[i]
            hits.append(Hit(hit.external_id, score, hit.text, hit.metadata, hit.score))
    else:
        timings["rerank_ms"] = 0.0
    timings["total_ms"] = _ms(t_all)
    return SearchResult(hits, timings, reranker=name)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
