"""First-stage retrieval evaluation through the service's own ingest and search paths.

The corpus goes in through :func:`service.collections.ensure_collection` and
:func:`service.ingest.index_documents` (the path ``quarry index`` takes), and every query
through :meth:`service.search.Searcher.search` (the path ``POST /v1/search`` takes, on the
container's segment cache with the same GPU placement), so
the numbers measure what users get, BM25 and fusion included.

Ingest is idempotent on document id and content: evaluating again on the same collection
re-indexes nothing, so comparing modes (dense, lexical, hybrid) on one collection costs one
indexing pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm import tqdm

from core.errors import InvalidRequest, QuarryError
from evaluation.metrics import DEFAULT_METRICS, EvalResult, evaluate_run

if TYPE_CHECKING:
    from core.datasets import BeirDataset
    from service import Container
    from service.search import Searcher

logger = logging.getLogger(__name__)

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[str, ...] = ("dense", "lexical", "hybrid")

Ranking = dict[str, dict[str, float]]
"""query id -> document id -> score, each query's documents in the order returned."""


def check_mode(mode: str) -> Mode:
    """``mode`` if it is a search mode, else an error listing the valid ones."""
    if mode not in MODES:
        raise InvalidRequest(f"Invalid mode {mode!r}. Valid modes: {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Median, p95, mean and max of per-query latencies, in milliseconds."""
    if not latencies_ms:
        return {}
    arr = np.asarray(latencies_ms, dtype=np.float64)
    return {
        "latency_median_ms": round(float(np.median(arr)), 3),
        "latency_p95_ms": round(float(np.percentile(arr, 95)), 3),
        "latency_mean_ms": round(float(arr.mean()), 3),
        "latency_max_ms": round(float(arr.max()), 3),
    }


def search_queries(
    searcher: Searcher,
    collection: str,
    queries: Mapping[str, str],
    *,
    mode: Mode,
    k: int,
    rrf_k: int = 60,
    show_progress: bool = True,
    warmup: bool = True,
) -> tuple[Ranking, dict[str, float]]:
    """Send every query through ``searcher``; returns the ranking and latency statistics.

    One untimed warm-up search first (``warmup``) keeps segment loading and model start-up
    out of the latency numbers. Service stage timings (``embed_ms``, ``lexical_ms``, ...) are
    averaged as ``stage_<name>``.
    """
    if k < 1:
        raise InvalidRequest("k must be at least 1")
    if warmup and queries:
        searcher.search(collection, next(iter(queries.values())), k=k, mode=mode, rrf_k=rrf_k)
    run: Ranking = {}
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    for qid, text in tqdm(
        queries.items(),
        total=len(queries),
        unit="query",
        desc=f"searching ({mode})",
        disable=not show_progress,
    ):
        t0 = time.perf_counter()
        result = searcher.search(collection, text, k=k, mode=mode, rrf_k=rrf_k)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        ranked: dict[str, float] = {}
        for hit in result.hits:
            ranked.setdefault(hit.external_id, float(hit.score))
        run[qid] = ranked
        for stage, ms in result.timings.items():
            stages.setdefault(stage, []).append(float(ms))
    stats = latency_stats(latencies)
    stats.update({f"stage_{s}": round(float(np.mean(v)), 3) for s, v in stages.items()})
    return run, stats


def index_corpus(
    c: Container,
    dataset: BeirDataset,
    *,
    collection: str,
    embedder: str | None = None,
    index_spec: str = "Flat",
    bm25_k1: float | None = None,
    bm25_b: float | None = None,
    reuse: bool = True,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> dict[str, float]:
    """Create (or reuse) ``collection`` and ingest the dataset's corpus into it.

    ``embedder``, ``index_spec``, ``bm25_k1`` and ``bm25_b`` set up a new collection (None:
    the defaults). Reusing a collection made with another model or other BM25 parameters
    than the ones asked for is an error, never a silent mix.
    """
    from core.collections import check_bm25, document_counts, get_collection
    from core.db import session_scope
    from core.errors import CollectionNotFound
    from core.models import DEFAULT_BM25_B, DEFAULT_BM25_K1
    from service.collections import ensure_collection
    from service.ingest import index_documents

    new_k1, new_b = check_bm25(
        DEFAULT_BM25_K1 if bm25_k1 is None else bm25_k1,
        DEFAULT_BM25_B if bm25_b is None else bm25_b,
    )
    with session_scope(c.sessions) as s:
        try:
            existing = get_collection(s, collection)
            found: tuple[str, float, float] | None = (
                existing.embedder,
                existing.bm25_k1,
                existing.bm25_b,
            )
        except CollectionNotFound:
            found = None
    if found is not None:
        found_model, found_k1, found_b = found
        if not reuse:
            raise InvalidRequest(
                f"Collection {collection!r} already exists; reuse it or pick another name"
            )
        if embedder is not None and embedder != found_model:
            raise InvalidRequest(
                f"Collection {collection!r} was embedded with {found_model!r}, not "
                f"{embedder!r}; pick another collection name for another model"
            )
        asked = [
            f"{label}={value:g}"
            for label, given, value, have in (
                ("k1", bm25_k1, new_k1, found_k1),
                ("b", bm25_b, new_b, found_b),
            )
            if given is not None and value != have
        ]
        if asked:
            raise InvalidRequest(
                f"Collection {collection!r} searches with BM25 k1={found_k1:g} b={found_b:g}, "
                f"not {' '.join(asked)}; pick another collection name for other BM25 "
                "parameters"
            )
        logger.info("Reusing collection %s (%s)", collection, found_model)
    ensure_collection(
        c, collection, embedder=embedder, index_spec=index_spec, bm25_k1=new_k1, bm25_b=new_b
    )
    report = index_documents(
        c,
        collection,
        dataset.documents(),
        batch_size=batch_size,
        wait=True,
        show_progress=show_progress,
    )
    if report.failed_jobs:
        raise QuarryError(
            f"{len(report.failed_jobs)} ingest job(s) failed: {', '.join(report.failed_jobs)}"
        )
    with session_scope(c.sessions) as s:
        coll = get_collection(s, collection)
        counts = document_counts(s, coll.id)
    live = sum(counts.values())
    if counts.get("pending"):
        raise QuarryError(
            f"{counts['pending']} documents of {collection!r} are still waiting to be indexed"
        )
    if live > report.documents:
        logger.warning(
            "Collection %s holds %d documents but the corpus %d: results may include "
            "documents the qrels never judged",
            collection,
            live,
            report.documents,
        )
    logger.info(
        "Corpus of %s: %d documents, %d indexed now, %d unchanged (%.1fs)",
        dataset.name,
        report.documents,
        report.indexed,
        report.unchanged,
        report.seconds,
    )
    return {
        "index_s": round(report.seconds, 3),
        "documents": report.documents,
        "indexed": report.indexed,
        "unchanged": report.unchanged,
        "collection_documents": live,
    }


def collection_config(c: Container, collection: str) -> dict[str, str | int | float | bool]:
    """What a run's results depend on in the collection: model, metric, index spec, BM25."""
    from core.collections import get_collection
    from core.db import session_scope

    with session_scope(c.sessions) as s:
        coll = get_collection(s, collection)
        return {
            "collection": coll.name,
            "embedder": coll.embedder,
            "dim": coll.dim,
            "metric": coll.metric,
            "index_spec": coll.index_spec,
            "lexical": bool(getattr(coll, "lexical", True)),
            "bm25_k1": float(coll.bm25_k1),
            "bm25_b": float(coll.bm25_b),
        }


def run_retrieval_eval(
    c: Container,
    dataset: BeirDataset,
    *,
    collection: str,
    mode: str = "dense",
    k: int = 100,
    rrf_k: int = 60,
    embedder: str | None = None,
    index_spec: str = "Flat",
    bm25_k1: float | None = None,
    bm25_b: float | None = None,
    reuse: bool = True,
    batch_size: int = 1000,
    metrics: Sequence[str] = DEFAULT_METRICS,
    show_progress: bool = True,
) -> tuple[EvalResult, Ranking, dict[str, float]]:
    """Index ``dataset``'s corpus into ``collection``, search every query, evaluate.

    ``embedder``, ``index_spec`` and the BM25 parameters ``bm25_k1``/``bm25_b`` set up a new
    collection (see :func:`index_corpus`).

    Returns the metrics, the ranking (query id -> document id -> service score, in the
    service's order) and timings: indexing (``index_s``, counts) and per-query search
    latency (``latency_median_ms``, ``latency_p95_ms``, ...). Rankings are evaluated in the
    service's order, so ties in the scores (frequent with RRF) cannot reorder them.
    """
    checked = check_mode(mode)
    if k < 1:
        raise InvalidRequest("k must be at least 1")
    t0 = time.perf_counter()
    index_info = index_corpus(
        c,
        dataset,
        collection=collection,
        embedder=embedder,
        index_spec=index_spec,
        bm25_k1=bm25_k1,
        bm25_b=bm25_b,
        reuse=reuse,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    t_search = time.perf_counter()
    run, stats = search_queries(
        c.searcher,
        collection,
        dataset.queries,
        mode=checked,
        k=k,
        rrf_k=rrf_k,
        show_progress=show_progress,
    )
    search_s = time.perf_counter() - t_search
    result = evaluate_run(dataset.qrels, run, metrics, preserve_order=True)
    timings: dict[str, float] = {
        **index_info,
        "queries": len(dataset.queries),
        "search_s": round(search_s, 3),
        **stats,
        "total_s": round(time.perf_counter() - t0, 3),
    }
    return result, run, timings
