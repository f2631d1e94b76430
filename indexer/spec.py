"""FAISS factory strings: validation, training requirements and index construction."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from core.collections import Metric, check_metric
from core.errors import InvalidIndexSpec, InvalidRequest

logger = logging.getLogger(__name__)

SPEC_EXAMPLES = "Flat, IVF256,Flat, HNSW32, IVF64,PQ16, PQ16"
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 64

# "Error in <signature> at /path/file.cpp:123: Error: 'cond' failed: human text"
_FAISS_MSG = re.compile(r" at \S+:\d+: (?:Error: '.*' failed: )?(?P<msg>.*)$", re.S)


def faiss_message(exc: BaseException) -> str:
    """The human part of a FAISS C++ exception, without source paths and signatures."""
    text = str(exc).strip()
    match = _FAISS_MSG.search(text)
    return (match.group("msg") if match else text).strip()


def faiss_metric(metric: Metric) -> int:
    """The FAISS metric type for ``metric`` (cosine is inner product on unit vectors)."""
    return faiss.METRIC_L2 if check_metric(metric) == "l2" else faiss.METRIC_INNER_PRODUCT


def _factory(spec: str, dim: int, metric: int = faiss.METRIC_L2) -> faiss.Index:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise InvalidRequest(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidIndexSpec(f"The index spec is empty. Examples of valid specs: {SPEC_EXAMPLES}")
    if "idmap" in spec.lower():
        raise InvalidIndexSpec(
            f"Invalid index spec {spec!r}: leave out IDMap, Quarry adds the id map itself. "
            f"Examples of valid specs: {SPEC_EXAMPLES}"
        )
    try:
        index = faiss.index_factory(dim, spec, metric)
    except RuntimeError as exc:
        raise InvalidIndexSpec(
            f"Invalid index spec {spec!r} for dim {dim}: {faiss_message(exc)}. "
            f"Examples of valid specs: {SPEC_EXAMPLES}"
        ) from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist < 1:
        raise InvalidIndexSpec(f"Invalid index spec {spec!r}: an IVF index needs at least one list")
    return index


def validate_spec(spec: str, dim: int) -> None:
    """Raise :class:`InvalidIndexSpec` unless ``spec`` is a FAISS factory string for ``dim``."""
    _factory(spec, dim)


def _walk(base: faiss.Index) -> Iterator[faiss.Index]:
    """``base`` and the indexes nested in it (IDMap, PreTransform, HNSW storage, refine).

    The yielded wrappers do not own their C++ objects: keep ``base`` referenced meanwhile.
    """
    index = faiss.downcast_index(base)
    yield index
    for attr in ("index", "storage", "base_index"):
        sub = getattr(index, attr, None)
        if isinstance(sub, faiss.Index):
            yield from _walk(sub)


def _training_need(base: faiss.Index) -> int:
    need = 0
    for index in _walk(base):
        if index.is_trained:
            continue
        need = max(need, 1)
        pq = getattr(index, "pq", None)
        if isinstance(pq, faiss.ProductQuantizer):
            need = max(need, pq.ksub)  # k-means with 2**nbits centroids per sub-quantizer
        if isinstance(index, faiss.IndexIVF):
            # quantizer_trains_alone == 1: the quantizer (e.g. IMI) trains itself; otherwise
            # k-means with nlist centroids runs on the training set.
            alone = index.quantizer_trains_alone == 1
            need = max(need, _training_need(index.quantizer) if alone else index.nlist)
        if isinstance(index, faiss.IndexPreTransform):
            chain: Any = index.chain  # a SWIG vector at run time, not a list
            for i in range(chain.size()):
                vt = faiss.downcast_VectorTransform(chain.at(i))
                if isinstance(vt, faiss.OPQMatrix):
                    need = max(need, 256)  # OPQ trains an internal 8-bit PQ
                elif isinstance(vt, faiss.PCAMatrix):
                    need = max(need, vt.d_out)
    return need


def min_training_vectors(spec: str, dim: int) -> int:
    """How many vectors ``spec`` needs to train (0 for indexes that need no training)."""
    index = _factory(spec, dim)
    return _training_need(index)


def set_search_params(
    index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None
) -> None:
    """Set IVF ``nprobe`` / HNSW ``efSearch`` on ``index`` (also through IDMap/PreTransform).

    Parameters that do not apply to the index type are ignored. Both are stored in the
    index file, so a loaded segment searches with what it was written with.
    """
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"{name} must be a positive integer, got {value!r}")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    hnsw = find_hnsw(index)
    if hnsw is not None and ef_search is not None:
        hnsw.hnsw.efSearch = ef_search


def find_hnsw(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW index inside ``index`` (through IDMap/PreTransform wrappers), if any.

    The result does not own its C++ object: keep ``index`` alive while using it.
    """
    sub = faiss.downcast_index(index)
    while True:
        if isinstance(sub, faiss.IndexHNSW):
            return sub
        if isinstance(sub, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            sub = faiss.downcast_index(sub.index)
        else:
            return None


def as_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` array; :class:`InvalidRequest` if not.

    ``dim=None`` accepts any width.
    """
    if dim is None and isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        dim = vectors.shape[1]
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.shape[1] != dim:
        shape = getattr(vectors, "shape", type(vectors).__name__)
        raise InvalidRequest(
            f"vectors must be a numpy array of shape (n, {dim or 'dim'}), got {shape}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise InvalidRequest(f"vectors must be floating point, got dtype {vectors.dtype}")
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidRequest("vectors contain NaN or infinite values")
    return out


def as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """``ids`` as a unique, non-negative int64 ``(n,)`` array; :class:`InvalidRequest` if not."""
    if not isinstance(ids, np.ndarray) or ids.shape != (n,):
        shape = getattr(ids, "shape", type(ids).__name__)
        raise InvalidRequest(f"ids must be a numpy array of shape ({n},), got {shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidRequest(f"ids must be integers, got dtype {ids.dtype}")
    out = np.ascontiguousarray(ids, dtype=np.int64)
    if n and out.min() < 0:
        raise InvalidRequest("ids must be non-negative (-1 marks an empty result slot)")
    if np.unique(out).size != n:
        raise InvalidRequest("ids must be unique")
    return out


def _plural(n: int) -> str:
    return f"{n} vector" if n == 1 else f"{n} vectors"


def build_index(
    spec: str,
    dim: int,
    metric: Metric,
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> faiss.Index:
    """Build an ``IndexIDMap2``-wrapped index from ``spec`` holding ``vectors`` under ``ids``.

    ``vectors`` is ``(n, dim)`` float, ``ids`` is ``(n,)`` int64. For ``cosine`` the vectors
    are L2-normalised (on a copy) and searched by inner product. Trains the index if the spec
    needs it; raises :class:`InvalidIndexSpec` when there are too few vectors to train.
    ``nprobe`` (IVF, default ``min(nlist, 16)``) and ``ef_search`` (HNSW, default 64) set the
    stored search parameters.
    """
    metric = check_metric(metric)
    index = _factory(spec, dim, faiss_metric(metric))
    x = as_vectors(vectors, dim)
    labels = as_ids(ids, x.shape[0])
    if metric == "cosine":
        x = x.copy() if x is vectors else x
        faiss.normalize_L2(x)
    for sub in _walk(index):
        # The factory turns on polysemous training for 8-bit PQ: tens of seconds of
        # annealing that only polysemous (Hamming-filtered) search uses, which we never do.
        if hasattr(sub, "do_polysemous_training"):
            sub.do_polysemous_training = False
    if not index.is_trained:
        need = _training_need(index)
        if x.shape[0] < need:
            raise InvalidIndexSpec(
                f"Index spec {spec!r} needs at least {_plural(need)} to train, but there "
                f"{'is' if x.shape[0] == 1 else 'are'} only {x.shape[0]}. Use a smaller spec "
                "(e.g. Flat, or fewer IVF lists) or index more documents first."
            )
        try:
            index.train(x)
        except RuntimeError as exc:
            raise InvalidIndexSpec(
                f"Training index spec {spec!r} on {_plural(x.shape[0])} failed: "
                f"{faiss_message(exc)}"
            ) from None
    wrapped = faiss.IndexIDMap2(index)
    wrapped.add_with_ids(x, labels)
    ivf = faiss.try_extract_index_ivf(wrapped)
    if ivf is not None:
        ivf.make_direct_map(True)  # lets IndexIDMap2.reconstruct reach IVF vectors
    set_search_params(
        wrapped,
        nprobe=nprobe if nprobe is not None else DEFAULT_NPROBE,
        ef_search=ef_search if ef_search is not None else DEFAULT_EF_SEARCH,
    )
    logger.debug("Built %s index (%s, dim %d) with %d vectors", spec, metric, dim, x.shape[0])
    return wrapped


def as_id_set(ids: np.ndarray | None, what: str) -> np.ndarray | None:
    """Sorted unique int64 ids (tombstones, allow-lists), or ``None``; checks the shape."""
    if ids is None:
        return None
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidRequest(f"{what} must be a 1-D array of integer ids, got shape {arr.shape}")
    return np.unique(arr.astype(np.int64, copy=False))
