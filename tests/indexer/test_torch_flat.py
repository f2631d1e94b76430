"""TorchFlatIndex (the GPU path for CPU-only FAISS builds) agrees with FAISS flat search.

It runs on the CPU here (fp32); on a GPU the same code runs in fp16."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.search import search_segments
from indexer.segment import LoadedSegment
from indexer.spec import build_index
from indexer.torch_flat import TorchFlatIndex


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_matches_faiss_flat_with_filters(metric: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    ids = np.arange(1000, 1500, dtype=np.int64)
    queries = rng.standard_normal((7, 32)).astype(np.float32)
    index = build_index("Flat", 32, metric, vectors, ids)  # type: ignore[arg-type]
    torch_index = TorchFlatIndex.from_faiss(index, device="cpu")
    assert torch_index is not None and torch_index.ntotal == 500
    faiss_seg = LoadedSegment("a", index, ids, metric, 32)  # type: ignore[arg-type]
    torch_seg = LoadedSegment("b", torch_index, ids, metric, 32)  # type: ignore[arg-type]
    exclude = ids[::3]
    allow = ids[::2]
    for kwargs in ({}, {"exclude_ids": exclude}, {"exclude_ids": exclude, "allow_ids": allow}):
        want_s, want_i = search_segments([faiss_seg], queries, 10, metric=metric, **kwargs)  # type: ignore[arg-type]
        got_s, got_i = search_segments([torch_seg], queries, 10, metric=metric, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-4, atol=1e-3)
    assert not np.isin(got_i, exclude).any() and np.isin(got_i, allow).all()


def test_other_index_types_are_not_converted() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    index = build_index("HNSW8", 16, "ip", vectors, np.arange(300, dtype=np.int64))
    assert TorchFlatIndex.from_faiss(index, device="cpu") is None
