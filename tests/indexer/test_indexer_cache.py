from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from indexer import cache as cache_mod
from indexer.cache import SegmentCache
from indexer.segment import LoadedSegment, load_segment, write_segment

MakeVectors = Callable[..., np.ndarray]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the segments loaded from disk, in order."""
    seen: list[str] = []

    def counting_load(
        path: Path, *, use_gpu: bool = False, checksums: Mapping[str, str] | None = None
    ) -> LoadedSegment:
        seen.append(path.name)
        return load_segment(path, use_gpu=use_gpu, checksums=checksums)

    monkeypatch.setattr(cache_mod, "load_segment", counting_load)
    return seen


@pytest.fixture
def root(tmp_path: Path, make_vectors: MakeVectors) -> Path:
    for i, name in enumerate(["a", "b", "c"]):
        ids = np.arange(i * 100, i * 100 + 10)
        write_segment(
            tmp_path, 5, name, spec="Flat", metric="ip", vectors=make_vectors(10, seed=i), ids=ids
        )
    return tmp_path


def test_reloads_only_on_new_version(root: Path, loads: list[str]) -> None:
    cache = SegmentCache(root, use_gpu=False)
    first = cache.get(5, 1, ["a", "b"])
    assert [s.name for s in first] == ["a", "b"] and loads == ["a", "b"]
    again = cache.get(5, 1, ["a", "b"])
    assert all(x is y for x, y in zip(first, again, strict=True)) and loads == ["a", "b"]

    # Compaction replaced "a" by "c": "b" is reused, "c" loaded, "a" dropped.
    second = cache.get(5, 2, ["b", "c"])
    assert second[0] is first[1] and second[1].name == "c"
    assert loads == ["a", "b", "c"]

    # A request holding the older manifest is served without rolling the cache back.
    old = cache.get(5, 1, ["a", "b"])
    assert [s.name for s in old] == ["a", "b"] and old[1] is first[1]
    assert cache.get(5, 2, ["b", "c"])[1] is second[1]

    cache.invalidate(5)
    assert [s.name for s in cache.get(5, 2, ["b", "c"])] == ["b", "c"]
    assert loads[-2:] == ["b", "c"]


def test_concurrent_gets_load_once(root: Path, loads: list[str]) -> None:
    cache = SegmentCache(root)
    results: list[list[LoadedSegment]] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(cache.get(5, 3, ["a", "b", "c"]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(loads) == ["a", "b", "c"]
    assert all(r[i] is results[0][i] for r in results for i in range(3))
