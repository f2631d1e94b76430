"""Fan-out search over a collection's segments with tombstone and allow-list filtering."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from core.collections import Metric, check_metric
from core.errors import InvalidRequest, SegmentCorrupt
from indexer.segment import LoadedSegment
from indexer.spec import as_id_set, as_vectors, find_hnsw
from indexer.torch_flat import TorchFlatIndex

logger = logging.getLogger(__name__)

#: Fewer queries than this search on the calling thread alone. FAISS parallelises a search
#: over its queries, so one query gains nothing from an OpenMP team and pays for starting
#: it; with many requests searching at once, teams per request oversubscribe the cores.
#: (20 is also where FAISS's flat search switches to BLAS.)
SOLO_BELOW = 20


@contextmanager
def _faiss_threads(nq: int) -> Iterator[None]:
    """One OpenMP thread for small searches; the setting is per calling thread."""
    if nq >= SOLO_BELOW:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _selector(
    exclude: np.ndarray | None, allow: np.ndarray | None
) -> tuple[faiss.IDSelector, list[faiss.IDSelector]]:
    """The selector for (allow and not exclude), plus every part, to keep them referenced."""
    parts: list[faiss.IDSelector] = []
    sel: faiss.IDSelector | None = None
    if allow is not None:
        sel = faiss.IDSelectorBatch(allow)
        parts.append(sel)
    if exclude is not None:
        excluded = faiss.IDSelectorBatch(exclude)
        not_excluded = faiss.IDSelectorNot(excluded)
        parts += [excluded, not_excluded]
        sel = not_excluded if sel is None else faiss.IDSelectorAnd(sel, not_excluded)
        parts.append(sel)
    assert sel is not None
    return sel, parts


def _search_params(index: faiss.Index, sel: faiss.IDSelector) -> faiss.SearchParameters:
    # Explicit parameters replace the index's own, so carry its nprobe / efSearch over.
    params: Any
    ivf = faiss.try_extract_index_ivf(index)
    hnsw = find_hnsw(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe, params.max_codes = ivf.nprobe, ivf.max_codes
    elif hnsw is not None:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = hnsw.hnsw.efSearch
    else:
        params = faiss.SearchParameters()
    params.sel = sel
    return params


def _valid(labels: np.ndarray, exclude: np.ndarray | None, allow: np.ndarray | None) -> np.ndarray:
    mask = labels >= 0
    if exclude is not None:
        mask &= ~np.isin(labels, exclude)
    if allow is not None:
        mask &= np.isin(labels, allow)
    return mask


def _overfetch(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    allow: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Filter in numpy for index types whose search ignores selectors: fetch more, then drop."""
    n = index.ntotal
    fetch = min(n, 2 * k)
    while True:
        dist, labels = index.search(queries, fetch)
        valid = _valid(labels, exclude, allow)
        if fetch >= n or (valid.sum(axis=1) >= k).all():
            break
        fetch = min(n, fetch * 4)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # valid hits first, in rank order
    labels = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(labels, order, 1), -1)
    return np.take_along_axis(dist, order, 1), labels


def _search_one(
    segment: LoadedSegment,
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    allow: np.ndarray | None,
    sel: faiss.IDSelector | None,
) -> tuple[np.ndarray, np.ndarray]:
    index = segment.index
    kk = min(k, segment.ntotal)
    if isinstance(index, TorchFlatIndex):  # a flat segment placed on the GPU with torch
        return index.search(queries, kk, exclude=exclude, allow=allow)
    if sel is None:
        return index.search(queries, kk)
    params = _search_params(index, sel)
    try:
        dist, labels = index.search(queries, kk, params=params)
    except RuntimeError as exc:
        logger.debug("Segment %s ignores selectors (%s); filtering in numpy", segment.name, exc)
        return _overfetch(index, queries, kk, exclude, allow)
    # Cheap guard for index types that accept the parameters but ignore the selector.
    return dist, np.where(_valid(labels, exclude, allow), labels, -1)


def search_segments(
    segments: Sequence[LoadedSegment],
    queries: np.ndarray,
    k: int,
    *,
    metric: Metric,
    exclude_ids: np.ndarray | None = None,
    allow_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` over all ``segments`` for each query row.

    Returns ``(scores (nq, k) float32, ids (nq, k) int64)``, best first; higher scores are
    better for every metric (``l2`` gives the negative squared distance, ``cosine`` the cosine
    similarity). Empty slots have id ``-1`` and score ``-inf``. ``exclude_ids`` (tombstones)
    are never returned; when ``allow_ids`` is given only those ids are.
    """
    metric = check_metric(metric)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidRequest(f"k must be a positive integer, got {k!r}")
    dim = segments[0].dim if segments else None
    q = as_vectors(queries, dim)
    for seg in segments:
        if seg.metric != metric or seg.dim != q.shape[1]:
            # The collection's metric and dim are fixed: a segment that differs is damaged.
            raise SegmentCorrupt(
                f"Segment {seg.name!r} is {seg.metric} with dim {seg.dim}, but the search is "
                f"{metric} with dim {q.shape[1]}",
                details={"segment": seg.name},
            )
    exclude = as_id_set(exclude_ids, "exclude_ids")
    allow = as_id_set(allow_ids, "allow_ids")
    if exclude is not None and exclude.size == 0:
        exclude = None
    nq = q.shape[0]
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    live = [s for s in segments if s.ntotal > 0]
    if nq == 0 or not live or (allow is not None and allow.size == 0):
        return scores, ids
    if metric == "cosine":
        q = q.copy() if q is queries else q
        faiss.normalize_L2(q)

    sel, _refs = (
        _selector(exclude, allow) if exclude is not None or allow is not None else (None, [])
    )
    all_scores, all_ids = [scores], [ids]
    with _faiss_threads(nq):
        for seg in live:
            dist, labels = _search_one(seg, q, k, exclude, allow, sel)
            seg_scores = -dist if metric == "l2" else dist
            all_scores.append(np.where(labels >= 0, seg_scores, -np.inf).astype(np.float32))
            all_ids.append(labels.astype(np.int64, copy=False))
    merged_scores = np.concatenate(all_scores, axis=1)
    merged_ids = np.concatenate(all_ids, axis=1)
    top = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(merged_scores, top, 1), np.take_along_axis(merged_ids, top, 1)
