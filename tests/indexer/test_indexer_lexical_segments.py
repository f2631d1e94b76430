"""The lexical index inside segments: atomic writes, loading, caching and compaction."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidRequest, SegmentCorrupt
from indexer import segment as segment_mod
from indexer.cache import SegmentCache
from indexer.compact import compact_lexical, compact_vectors
from indexer.lexical import (
    LEXICAL_FILE,
    LEXICAL_VOCAB_FILE,
    LexicalIndex,
    build_lexical,
    search_lexical,
)
from indexer.search import search_segments
from indexer.segment import (
    META_FILE,
    load_segment,
    new_segment_name,
    read_lexical,
    write_segment,
)
from tests.indexer.conftest import QUERIES, assert_same_index, make_corpus

MakeVectors = Callable[..., np.ndarray]
_SPANS = [(0, 120), (500, 200), (900, 80)]


def _write(
    root: Path, make_vectors: MakeVectors, *, lexical: tuple[bool, ...] = (True, True, True)
) -> tuple[list[Path], np.ndarray, list[str]]:
    paths, all_ids, all_texts = [], [], []
    for i, ((start, n), with_texts) in enumerate(zip(_SPANS, lexical, strict=True)):
        ids = np.arange(start, start + n, dtype=np.int64)
        texts = make_corpus(n, seed=i)
        paths.append(
            write_segment(
                root,
                1,
                new_segment_name(),
                spec="Flat",
                metric="cosine",
                vectors=make_vectors(n, seed=i),
                ids=ids,
                texts=texts if with_texts else None,
            )
        )
        all_ids.append(ids)
        all_texts += texts
    return paths, np.concatenate(all_ids), all_texts


def test_segment_with_texts_loads_both_indexes(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, ids, texts = _write(tmp_path, make_vectors)
    assert (paths[0] / LEXICAL_FILE).is_file() and (paths[0] / LEXICAL_VOCAB_FILE).is_file()
    assert json.loads((paths[0] / META_FILE).read_text())["lexical"] is True
    segments = [load_segment(p) for p in paths]
    for seg in segments:
        assert seg.lexical is not None
        np.testing.assert_array_equal(seg.lexical.ids, np.sort(seg.lexical.ids))
    lexicals = [seg.lexical for seg in segments if seg.lexical is not None]
    whole = build_lexical(texts, ids)
    for query in QUERIES:
        a, b = search_lexical(lexicals, query, 10), search_lexical([whole], query, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])


def test_segment_without_texts_has_no_lexical(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, _, _ = _write(tmp_path, make_vectors, lexical=(False, False, False))
    assert not (paths[0] / LEXICAL_FILE).exists()
    assert "lexical" not in json.loads((paths[0] / META_FILE).read_text())
    assert load_segment(paths[0]).lexical is None
    assert read_lexical(paths[0]) is None


def test_bad_lexical_arguments_are_refused(tmp_path: Path, make_vectors: MakeVectors) -> None:
    x, ids = make_vectors(4), np.arange(4)
    kwargs = {"spec": "Flat", "metric": "ip", "vectors": x, "ids": ids}
    with pytest.raises(InvalidRequest, match="texts"):
        write_segment(tmp_path, 1, "a", texts=["gene"] * 3, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="not both"):
        lex = build_lexical(["gene"] * 4, ids)
        write_segment(tmp_path, 1, "a", texts=["gene"] * 4, lexical=lex, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="not in the segment"):
        lex = build_lexical(["gene"] * 4, ids + 10)
        write_segment(tmp_path, 1, "a", lexical=lex, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "1" / "a").exists()


def test_failed_lexical_write_leaves_nothing(
    tmp_path: Path, make_vectors: MakeVectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(self: LexicalIndex, directory: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(segment_mod.LexicalIndex, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_segment(
            tmp_path,
            1,
            "a",
            spec="Flat",
            metric="ip",
            vectors=make_vectors(5),
            ids=np.arange(5),
            texts=make_corpus(5),
        )
    assert list((tmp_path / "1").iterdir()) == []  # neither the segment nor its temp dir


def test_missing_lexical_files_are_detected(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, _, _ = _write(tmp_path, make_vectors)
    (paths[0] / LEXICAL_FILE).unlink()
    (paths[0] / LEXICAL_VOCAB_FILE).unlink()
    with pytest.raises(SegmentCorrupt, match="lexical"):
        load_segment(paths[0])
    with pytest.raises(SegmentCorrupt, match="lexical"):
        read_lexical(paths[0])


def test_cache_carries_lexical(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, _, _ = _write(tmp_path, make_vectors)
    cache = SegmentCache(tmp_path)
    loaded = cache.get(1, 1, [p.name for p in paths])
    assert all(seg.lexical is not None for seg in loaded)
    assert cache.get(1, 1, [p.name for p in paths])[0].lexical is loaded[0].lexical


def test_compaction_merges_lexical_like_vectors(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, ids, texts = _write(tmp_path, make_vectors)
    drop = np.concatenate([ids[::6], [123456]])
    kept_ids, kept_x = compact_vectors(paths, drop)
    merged = compact_lexical(paths, drop)
    assert merged is not None
    np.testing.assert_array_equal(merged.ids, kept_ids)
    keep = ~np.isin(ids, drop)
    kept_texts = [t for t, k in zip(texts, keep, strict=True) if k]
    assert_same_index(merged, build_lexical(kept_texts, kept_ids))

    path = write_segment(
        tmp_path,
        1,
        new_segment_name(),
        spec="Flat",
        metric="cosine",
        vectors=kept_x,
        ids=kept_ids,
        lexical=merged,
    )
    compacted = load_segment(path)
    assert compacted.lexical is not None
    before = [seg.lexical for seg in map(load_segment, paths) if seg.lexical is not None]
    for query in QUERIES:
        # Tombstones leave the statistics, so a compaction does not change any score.
        a = search_lexical(before, query, 20, exclude_ids=drop)
        b = search_lexical([compacted.lexical], query, 20)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    _, found = search_segments([compacted], kept_x[:5], 1, metric="cosine")
    np.testing.assert_array_equal(found[:, 0], kept_ids[:5])


def test_compaction_without_lexical_segments(tmp_path: Path, make_vectors: MakeVectors) -> None:
    paths, _, _ = _write(tmp_path, make_vectors, lexical=(False, False, False))
    assert compact_lexical(paths, np.empty(0, np.int64)) is None
    with pytest.raises(InvalidRequest):
        compact_lexical([], np.empty(0, np.int64))


def test_compaction_of_mixed_segments_keeps_what_it_has(
    tmp_path: Path, make_vectors: MakeVectors, caplog: pytest.LogCaptureFixture
) -> None:
    paths, ids, _ = _write(tmp_path, make_vectors, lexical=(True, False, True))
    drop = ids[::10]
    kept_ids, kept_x = compact_vectors(paths, drop)
    with caplog.at_level(logging.WARNING):
        merged = compact_lexical(paths, drop)
    assert merged is not None and "1 of 3 segments have none" in caplog.text
    covered = np.concatenate([np.arange(0, 120), np.arange(900, 980)])
    np.testing.assert_array_equal(merged.ids, covered[~np.isin(covered, drop)])
    path = write_segment(
        tmp_path,
        1,
        new_segment_name(),
        spec="Flat",
        metric="cosine",
        vectors=kept_x,
        ids=kept_ids,
        lexical=merged,
    )
    assert load_segment(path).lexical is not None
