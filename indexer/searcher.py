"""Dense search over a collection: embed the query, fan out over segments, fetch documents."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from core.collections import get_collection
from core.db import session_scope
from core.documents import documents_by_ids, filtered_ids
from embedder import EmbedderPool
from indexer.cache import SegmentCache
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


class Searcher:
    """Answers ``POST /v1/search`` and ``quarry search`` through the same code path."""

    def __init__(
        self, sessions: sessionmaker[Session], embedders: EmbedderPool, cache: SegmentCache
    ) -> None:
        self._sessions = sessions
        self._embedders = embedders
        self._cache = cache

    def search(
        self, collection: str, query: str, *, k: int = 10, filters: dict[str, Any] | None = None
    ) -> SearchResult:
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        with session_scope(self._sessions) as s:
            coll = get_collection(s, collection)
            segments = active_segments(s, coll.id)
            version, names = coll.manifest_version, [seg.name for seg in segments]
            tombstones = tombstone_ids(s, coll.id)
            allow = filtered_ids(s, coll.id, filters) if filters else None
            cid, metric, model = coll.id, coll.metric, coll.embedder
        timings["manifest_ms"] = _ms(t_all)
        if allow is not None and len(allow) == 0:
            timings["total_ms"] = _ms(t_all)
            return SearchResult([], timings)

        t = time.perf_counter()
        qvec = self._embedders.get(model).embed([query], kind="query", normalize=False)
        timings["embed_ms"] = _ms(t)

        t = time.perf_counter()
        loaded = self._cache.get(cid, version, names)
        timings["load_ms"] = _ms(t)

        t = time.perf_counter()
        scores, ids = search_segments(
            loaded,
            qvec.astype(np.float32, copy=False),
            k,
            metric=metric,  # type: ignore[arg-type]
            exclude_ids=tombstones if len(tombstones) else None,
            allow_ids=allow,
        )
        timings["search_ms"] = _ms(t)

        t = time.perf_counter()
        found = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0], strict=True) if i >= 0]
        with session_scope(self._sessions) as s:
            docs = documents_by_ids(s, [i for i, _ in found])
            hits = [
                Hit(docs[i].external_id, score, docs[i].text, dict(docs[i].meta or {}))
                for i, score in found
                if i in docs  # deleted after the manifest read: drop, never show stale rows
            ]
        timings["fetch_ms"] = _ms(t)
        timings["total_ms"] = _ms(t_all)
        return SearchResult(hits, timings)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
