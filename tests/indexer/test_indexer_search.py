from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from core.errors import InvalidRequest, SegmentCorrupt
from indexer import search as search_mod
from indexer.search import search_segments
from indexer.segment import LoadedSegment
from indexer.spec import Metric, build_index

DIM = 32
K = 10
MakeVectors = Callable[..., np.ndarray]


def _segments(
    make_vectors: MakeVectors, spec: str, metric: Metric, sizes: tuple[int, ...] = (400, 300, 500)
) -> tuple[list[LoadedSegment], np.ndarray, np.ndarray]:
    """Segments with disjoint id ranges, plus all their ids and vectors."""
    segments, all_ids, all_x = [], [], []
    start = 1000
    for i, n in enumerate(sizes):
        x = make_vectors(n, seed=i)
        ids = np.arange(start, start + n, dtype=np.int64)
        start += n + 17
        index = build_index(spec, DIM, metric, x, ids)
        segments.append(LoadedSegment(f"s{i}", index, ids, metric, DIM))
        all_ids.append(ids)
        all_x.append(x)
    return segments, np.concatenate(all_ids), np.concatenate(all_x)


def _brute_force(
    ids: np.ndarray,
    x: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: Metric,
    exclude: np.ndarray | None = None,
    allow: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    keep = np.ones(len(ids), dtype=bool)
    if exclude is not None:
        keep &= ~np.isin(ids, exclude)
    if allow is not None:
        keep &= np.isin(ids, allow)
    ids, x = ids[keep], x[keep].astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    l2 = metric == "l2"
    scores = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1) if l2 else q @ x.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), ids[top]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_merge_equals_brute_force(make_vectors: MakeVectors, metric: Metric) -> None:
    segments, ids, x = _segments(make_vectors, "Flat", metric)
    queries = make_vectors(25, seed=99)
    scores, found = search_segments(segments, queries, K, metric=metric)
    assert scores.shape == found.shape == (25, K)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    want_scores, want_ids = _brute_force(ids, x, queries, K, metric)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_filters_equal_brute_force(make_vectors: MakeVectors, metric: Metric) -> None:
    segments, ids, x = _segments(make_vectors, "Flat", metric)
    queries = make_vectors(25, seed=99)
    _, unfiltered = search_segments(segments, queries, K, metric=metric)
    # Tombstone half of what the unfiltered search found, in every segment.
    exclude = np.unique(unfiltered[:, ::2])
    _, found = search_segments(segments, queries, K, metric=metric, exclude_ids=exclude)
    assert not np.isin(found, exclude).any()
    np.testing.assert_array_equal(found, _brute_force(ids, x, queries, K, metric, exclude)[1])

    allow = np.random.default_rng(5).choice(ids, 150, replace=False)
    _, found = search_segments(segments, queries, K, metric=metric, allow_ids=allow)
    assert np.isin(found, allow).all()
    want = _brute_force(ids, x, queries, K, metric, allow=allow)[1]
    np.testing.assert_array_equal(found, want)

    _, found = search_segments(
        segments, queries, K, metric=metric, exclude_ids=exclude, allow_ids=allow
    )
    np.testing.assert_array_equal(
        found, _brute_force(ids, x, queries, K, metric, exclude, allow)[1]
    )


@pytest.mark.parametrize("spec", ["IVF32,Flat", "HNSW16"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_approximate_indexes_with_filters(
    make_vectors: MakeVectors, spec: str, metric: Metric
) -> None:
    segments, ids, x = _segments(make_vectors, spec, metric)
    queries = make_vectors(50, seed=99)
    _, found = search_segments(segments, queries, K, metric=metric)
    assert _recall(found, _brute_force(ids, x, queries, K, metric)[1]) >= 0.9

    exclude = np.unique(found[:, ::2])
    _, found = search_segments(segments, queries, K, metric=metric, exclude_ids=exclude)
    assert not np.isin(found, exclude).any()
    truth = _brute_force(ids, x, queries, K, metric, exclude)[1]
    assert _recall(found, truth) >= 0.9

    allow = np.random.default_rng(5).choice(ids, 400, replace=False)
    _, found = search_segments(segments, queries, K, metric=metric, allow_ids=allow)
    assert np.isin(found[found >= 0], allow).all()
    assert _recall(found, _brute_force(ids, x, queries, K, metric, allow=allow)[1]) >= 0.9


@pytest.mark.parametrize("spec", ["Flat", "IVF32,Flat", "HNSW16"])
def test_selectors_work_through_the_id_map(
    make_vectors: MakeVectors, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAISS applies the selector to external ids through IndexIDMap2: no numpy fallback.
    def no_fallback(*_args: object) -> None:
        raise AssertionError("selector not applied by FAISS")

    monkeypatch.setattr(search_mod, "_overfetch", no_fallback)
    segments, ids, _ = _segments(make_vectors, spec, "l2")
    allow = ids[::10]
    exclude = allow[::2]
    _, found = search_segments(
        segments, make_vectors(20, seed=7), K, metric="l2", exclude_ids=exclude, allow_ids=allow
    )
    # Post-filtering the unfiltered top-k would leave most slots empty.
    assert (found >= 0).mean() > 0.95
    assert np.isin(found[found >= 0], np.setdiff1d(allow, exclude)).all()


def test_index_without_selector_support_falls_back(
    make_vectors: MakeVectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IndexPQ refuses search parameters: results are over-fetched and filtered in numpy.
    segments, ids, x = _segments(make_vectors, "PQ8", "l2", sizes=(400, 400))
    queries = make_vectors(20, seed=99)
    exclude = ids[::2]
    allow = ids[::3]
    _, found = search_segments(
        segments, queries, K, metric="l2", exclude_ids=exclude, allow_ids=allow
    )
    assert (found >= 0).all()
    assert not np.isin(found, exclude).any() and np.isin(found, allow).all()
    truth = _brute_force(ids, x, queries, K, "l2", exclude, allow)[1]
    assert _recall(found, truth) >= 0.5  # PQ is lossy; the filter is what is checked here


def test_padding_and_edge_cases(make_vectors: MakeVectors) -> None:
    queries = make_vectors(3, seed=9)
    scores, found = search_segments([], queries, 5, metric="cosine")
    assert (found == -1).all() and np.isneginf(scores).all()

    segments, ids, _ = _segments(make_vectors, "Flat", "ip", sizes=(2, 3))
    scores, found = search_segments(segments, queries, 8, metric="ip")
    assert (found[:, :5] >= 0).all() and (found[:, 5:] == -1).all()
    assert np.isneginf(scores[:, 5:]).all()
    assert set(found[0, :5]) == set(ids)

    _, found = search_segments(segments, queries, 8, metric="ip", allow_ids=np.array([], np.int64))
    assert (found == -1).all()
    _, found = search_segments(segments, queries, 8, metric="ip", exclude_ids=ids)
    assert (found == -1).all()


def test_argument_checks(make_vectors: MakeVectors) -> None:
    segments, _, _ = _segments(make_vectors, "Flat", "ip", sizes=(5,))
    q = make_vectors(2)
    with pytest.raises(InvalidRequest, match="k must be a positive integer"):
        search_segments(segments, q, 0, metric="ip")
    with pytest.raises(InvalidRequest, match=r"shape \(n, 32\)"):
        search_segments(segments, q[0], 3, metric="ip")
    with pytest.raises(SegmentCorrupt, match="is ip"):
        search_segments(segments, q, 3, metric="l2")
    with pytest.raises(InvalidRequest, match="exclude_ids"):
        search_segments(segments, q, 3, metric="ip", exclude_ids=np.zeros((2, 2), np.int64))
