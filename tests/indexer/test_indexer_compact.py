from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidRequest, SegmentCorrupt
from indexer.compact import compact_vectors
from indexer.search import search_segments
from indexer.segment import load_segment, new_segment_name, write_segment

DIM = 32
MakeVectors = Callable[..., np.ndarray]


def _write_segments(
    root: Path, make_vectors: MakeVectors
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    paths, all_ids, all_x = [], [], []
    for i, (start, n) in enumerate([(0, 120), (500, 200), (900, 80)]):
        x = make_vectors(n, seed=i)
        ids = np.arange(start, start + n, dtype=np.int64)
        paths.append(
            write_segment(
                root, 1, new_segment_name(), spec="Flat", metric="cosine", vectors=x, ids=ids
            )
        )
        all_ids.append(ids)
        all_x.append(x)
    return paths, np.concatenate(all_ids), np.concatenate(all_x)


def test_compaction_drops_tombstones(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, ids, x = _write_segments(tmp_path, make_vectors)
    drop = np.concatenate([ids[::7], [123456]])  # an id in no segment is harmless
    kept_ids, kept_x = compact_vectors(paths, drop)
    keep = ~np.isin(ids, drop)
    np.testing.assert_array_equal(kept_ids, ids[keep])
    np.testing.assert_array_equal(kept_x, x[keep])
    assert kept_ids.dtype == np.int64 and kept_x.dtype == np.float32


def test_rebuilt_ivf_segment_finds_every_vector(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, ids, _ = _write_segments(tmp_path, make_vectors)
    drop = ids[::5]
    kept_ids, kept_x = compact_vectors(paths, drop)
    path = write_segment(
        tmp_path,
        1,
        new_segment_name(),
        spec="IVF16,Flat",
        metric="cosine",
        vectors=kept_x,
        ids=kept_ids,
    )
    seg = load_segment(path)
    assert seg.ntotal == len(kept_ids)
    _, found = search_segments([seg], kept_x, 1, metric="cosine")  # nprobe 16 = nlist: exhaustive
    np.testing.assert_array_equal(found[:, 0], kept_ids)
    _, found = search_segments([seg], kept_x, 5, metric="cosine", exclude_ids=drop)
    assert not np.isin(found, drop).any()


def test_compaction_refuses_inconsistent_input(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, _, _ = _write_segments(tmp_path, make_vectors)
    with pytest.raises(SegmentCorrupt, match="more than once"):
        compact_vectors([paths[0], paths[0]], np.array([], np.int64))
    wide = write_segment(
        tmp_path,
        1,
        "wide",
        spec="Flat",
        metric="cosine",
        vectors=make_vectors(5, dim=16),
        ids=np.arange(5),
    )
    with pytest.raises(SegmentCorrupt, match="different dims"):
        compact_vectors([paths[0], wide], np.array([], np.int64))
    with pytest.raises(InvalidRequest, match="at least one segment"):
        compact_vectors([], np.array([], np.int64))
