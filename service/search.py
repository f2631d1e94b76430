"""Search over a collection: dense (FAISS), lexical (BM25) or hybrid (reciprocal rank fusion).

The manifest is read once; both indexes are fanned out over the same live segments with
the same tombstones and metadata allow-list; the documents are fetched last. Segment files
are verified against the manifest's checksums when they are loaded: a corrupt segment is a
:class:`~core.errors.SegmentCorrupt` (5xx) naming the collection, never silently fewer hits."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from core.collections import get_collection
from core.db import session_scope
from core.documents import documents_by_ids, filtered_ids
from core.errors import InvalidRequest, SegmentCorrupt
from embedder import EmbedderPool
from indexer.cache import SegmentCache
from indexer.fusion import rrf
from indexer.lexical import search_lexical
from indexer.manifest import active_segments, tombstone_ids
from indexer.search import search_segments

logger = logging.getLogger(__name__)


@dataclass
class Hit:
    external_id: str
    score: float
    text: str
    metadata: dict[str, Any]


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)


SearchMode = Literal["dense", "lexical", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("dense", "lexical", "hybrid")
HYBRID_DEPTH = 100  # candidates taken from each side before fusion


class Searcher:
    """Answers ``POST /v1/search`` and ``quarry search`` through the same code path."""

    def __init__(
        self, sessions: sessionmaker[Session], embedders: EmbedderPool, cache: SegmentCache
    ) -> None:
        self._sessions = sessions
        self._embedders = embedders
        self._cache = cache

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
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        with session_scope(self._sessions) as s:
            coll = get_collection(s, collection)
            if mode != "dense" and not coll.lexical:
                raise InvalidRequest(
                    f"Collection {collection!r} keeps no lexical index (created with "
                    "lexical=false); use mode 'dense'"
                )
            segments = active_segments(s, coll.id)
            version, names = coll.manifest_version, [seg.name for seg in segments]
            checksums = {seg.name: seg.checksums for seg in segments}
            tombstones = tombstone_ids(s, coll.id)
            allow = filtered_ids(s, coll.id, filters) if filters else None
            cid, metric, model = coll.id, coll.metric, coll.embedder
        timings["manifest_ms"] = _ms(t_all)
        if allow is not None and len(allow) == 0:
            timings["total_ms"] = _ms(t_all)
            return SearchResult([], timings)

        t = time.perf_counter()
        try:
            loaded = self._cache.get(cid, version, names, checksums=checksums)
        except SegmentCorrupt as exc:
            exc.details = {**exc.details, "collection": collection}
            exc.message = f"Collection {collection!r} is degraded: {exc.message}"
            raise
        timings["load_ms"] = _ms(t)
        exclude = tombstones if len(tombstones) else None
        depth = max(k, HYBRID_DEPTH) if mode == "hybrid" else k

        ranked: list[tuple[int, float]]
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if mode in ("dense", "hybrid"):
            t = time.perf_counter()
            qvec = self._embedders.get(model).embed([query], kind="query", normalize=False)
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
            lscores, lids = search_lexical(lex, query, depth, exclude_ids=exclude, allow_ids=allow)
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


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
