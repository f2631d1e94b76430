from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import pytest

from core.errors import InvalidIndexSpec, InvalidRequest
from indexer.spec import (
    build_index,
    find_hnsw,
    min_training_vectors,
    set_search_params,
    validate_spec,
)

DIM = 32
MakeVectors = Callable[..., np.ndarray]


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW16", "PQ8", "IVF16,PQ8"])
def test_build_index_finds_each_vector(spec: str, make_vectors: MakeVectors) -> None:
    x = make_vectors(1000)
    ids = np.arange(5000, 6000, dtype=np.int64)
    index = build_index(spec, DIM, "l2", x, ids)
    assert isinstance(index, faiss.IndexIDMap2)
    assert index.ntotal == 1000
    _, labels = index.search(x[:200], 1)
    hit_rate = (labels[:, 0] == ids[:200]).mean()
    assert hit_rate >= (0.99 if "PQ" not in spec else 0.5)
    # IndexIDMap2 reconstructs by external id (IVF needs its direct map for this).
    np.testing.assert_allclose(index.reconstruct(5007), x[7], atol=3 if "PQ" in spec else 1e-5)


def test_build_index_defaults_search_params(make_vectors: MakeVectors) -> None:
    x = make_vectors(500)
    ivf = build_index("IVF64,Flat", DIM, "ip", x, np.arange(500))
    assert faiss.extract_index_ivf(ivf).nprobe == 16
    small = build_index("IVF8,Flat", DIM, "ip", x, np.arange(500))
    assert faiss.extract_index_ivf(small).nprobe == 8
    hnsw = build_index("HNSW16", DIM, "ip", x, np.arange(500), ef_search=100)
    found = find_hnsw(hnsw)
    assert found is not None and found.hnsw.efSearch == 100
    set_search_params(ivf, nprobe=32)
    assert faiss.extract_index_ivf(ivf).nprobe == 32
    with pytest.raises(InvalidRequest, match="nprobe"):
        set_search_params(ivf, nprobe=0)


def test_cosine_normalises_a_copy(make_vectors: MakeVectors) -> None:
    x = make_vectors(100)
    before = x.copy()
    index = build_index("Flat", DIM, "cosine", x, np.arange(100))
    np.testing.assert_array_equal(x, before)
    q = x[:5] / np.linalg.norm(x[:5], axis=1, keepdims=True)
    scores, labels = index.search(q, 1)
    np.testing.assert_array_equal(labels[:, 0], np.arange(5))
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("Foo", "could not parse"),
        ("PQ7", "multiple"),
        ("IDMap,Flat", "leave out IDMap"),
        ("", "empty"),
        ("IVF0,Flat", "at least one list"),
    ],
)
def test_bad_spec_is_explained(spec: str, fragment: str) -> None:
    with pytest.raises(InvalidIndexSpec, match=fragment) as info:
        validate_spec(spec, DIM)
    assert "/project/" not in info.value.message  # no C++ source paths leak
    if spec not in ("", "IVF0,Flat"):
        assert "Examples of valid specs: Flat, IVF256,Flat, HNSW32" in info.value.message


def test_valid_specs_pass() -> None:
    for spec in ["Flat", "IVF256,Flat", "HNSW32", "IVF64,PQ16", "PQ16", "OPQ16,IVF64,PQ16"]:
        validate_spec(spec, 64)


@pytest.mark.parametrize(
    ("spec", "need"),
    [
        ("Flat", 0),
        ("HNSW32", 0),
        ("IVF16,Flat", 16),
        ("PQ8", 256),
        ("PQ8x4fs", 16),
        ("IVF16,PQ8", 256),
        ("IVF512,PQ8", 512),
        ("OPQ8,IVF16,PQ8", 256),
        ("PCA16,IVF8,Flat", 16),
        ("HNSW16,PQ8", 256),
        ("IMI2x4,Flat", 256),
        ("SQ8", 1),
    ],
)
def test_min_training_vectors(spec: str, need: int) -> None:
    assert min_training_vectors(spec, DIM) == need


@pytest.mark.parametrize("spec", ["IVF16,Flat", "PQ8", "OPQ8,IVF16,PQ8", "PCA16,Flat"])
def test_min_training_vectors_is_exact(spec: str, make_vectors: MakeVectors) -> None:
    need = min_training_vectors(spec, DIM)
    x = make_vectors(need)
    build_index(spec, DIM, "l2", x, np.arange(need))
    with pytest.raises(InvalidIndexSpec):
        build_index(spec, DIM, "l2", x[:-1], np.arange(need - 1))


def test_too_few_vectors_says_how_many(make_vectors: MakeVectors) -> None:
    x = make_vectors(10)
    with pytest.raises(InvalidIndexSpec, match=r"needs at least 16 vectors.*only 10") as info:
        build_index("IVF16,Flat", DIM, "l2", x, np.arange(10))
    assert info.value.code == "index_error"


def test_bad_arguments(make_vectors: MakeVectors) -> None:
    x = make_vectors(20)
    ids = np.arange(20)
    with pytest.raises(InvalidRequest, match=r"shape \(n, 16\)"):
        build_index("Flat", 16, "l2", x, ids)
    with pytest.raises(InvalidRequest, match="unique"):
        build_index("Flat", DIM, "l2", x, np.zeros(20, dtype=np.int64))
    with pytest.raises(InvalidRequest, match="non-negative"):
        build_index("Flat", DIM, "l2", x, ids - 1)
    with pytest.raises(InvalidRequest, match=r"shape \(20,\)"):
        build_index("Flat", DIM, "l2", x, ids[:5])
    with pytest.raises(InvalidRequest, match="Valid metrics: cosine, ip, l2"):
        build_index("Flat", DIM, "dot", x, ids)  # type: ignore[arg-type]
    bad = x.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        build_index("Flat", DIM, "l2", bad, ids)
    with pytest.raises(InvalidRequest, match="dim"):
        validate_spec("Flat", 0)
