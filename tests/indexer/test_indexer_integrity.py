"""Segment integrity: checksums written with a segment, verified on load, on real damaged files."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import SegmentCorrupt
from indexer.cache import SegmentCache
from indexer.compact import compact_lexical, compact_vectors
from indexer.integrity import CHECKSUMS_FILE
from indexer.lexical import LEXICAL_FILE, LEXICAL_VOCAB_FILE
from indexer.segment import (
    load_segment,
    new_segment_name,
    read_lexical,
    read_vectors,
    segment_checksums,
    verify_segment,
    write_segment,
)
from tests.indexer.conftest import make_corpus

MakeVectors = Callable[..., np.ndarray]
CID = 7
N = 1000  # 1000 x 32 float32: index.faiss and vectors.npy are ~128 KB each


@pytest.fixture
def segment(tmp_path: Path, make_vectors: MakeVectors) -> tuple[Path, dict[str, str]]:
    """A Flat segment with a lexical index, and its checksums."""
    path = write_segment(
        tmp_path,
        CID,
        new_segment_name(),
        spec="Flat",
        metric="ip",
        vectors=make_vectors(N),
        ids=np.arange(1000, 1000 + N, dtype=np.int64),
        texts=make_corpus(N),
    )
    return path, segment_checksums(path)


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _overwrite_middle(path: Path, n_bytes: int = 8192) -> None:
    size = path.stat().st_size
    assert size > 2 * n_bytes
    with open(path, "r+b") as f:
        f.seek(size // 2 - n_bytes // 2)
        f.write(np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())


def _truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def _corrupt_raised(path: Path, checksums: dict[str, str] | None, match: str) -> SegmentCorrupt:
    with pytest.raises(SegmentCorrupt, match=match) as info:
        load_segment(path, checksums=checksums)
    assert info.value.details["collection_id"] == CID
    assert info.value.details["segment"] == path.name
    assert info.value.status == 500 and info.value.code == "segment_corrupt"
    return info.value


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW16"])
def test_checksums_match_the_files(tmp_path: Path, make_vectors: MakeVectors, spec: str) -> None:
    path = write_segment(
        tmp_path,
        1,
        "seg",
        spec=spec,
        metric="l2",
        vectors=make_vectors(300),
        ids=np.arange(300),
        texts=make_corpus(300),
    )
    sums = segment_checksums(path)
    files = sorted(p.name for p in path.iterdir() if p.name != CHECKSUMS_FILE)
    assert sorted(sums) == files
    assert sums == {name: _sha(path / name) for name in files}  # hashed while writing
    assert verify_segment(path, sums) == []
    assert load_segment(path, checksums=sums).ntotal == 300


def test_overwritten_index_bytes_are_caught(segment: tuple[Path, dict[str, str]]) -> None:
    path, sums = segment
    assert (path / "index.faiss").stat().st_size > 16 * 1024
    _overwrite_middle(path / "index.faiss")
    # The damaged index may still parse: only the checksum tells the vectors are wrong.
    exc = _corrupt_raised(path, sums, r"index\.faiss: checksum mismatch")
    assert exc.details["problems"] == [p for p in exc.details["problems"] if "index.faiss" in p]
    problems = verify_segment(path, sums)
    assert any("index.faiss: checksum mismatch" in p for p in problems)


def test_truncated_index_always_raises_segment_corrupt(
    segment: tuple[Path, dict[str, str]],
) -> None:
    path, sums = segment
    _truncate(path / "index.faiss")
    _corrupt_raised(path, sums, "checksum mismatch")
    _corrupt_raised(path, None, r"unreadable or truncated index\.faiss")
    problems = verify_segment(path, None)
    assert any("unreadable or truncated index.faiss" in p for p in problems)
    assert any("index.faiss: checksum mismatch" in p for p in verify_segment(path, sums))


def test_truncated_ids_always_raise_segment_corrupt(
    segment: tuple[Path, dict[str, str]],
) -> None:
    path, sums = segment
    _truncate(path / "ids.npy", 0.7)
    _corrupt_raised(path, sums, r"ids\.npy: checksum mismatch")
    _corrupt_raised(path, None, r"unreadable or truncated ids\.npy")
    with pytest.raises(SegmentCorrupt, match=r"ids\.npy"):
        read_vectors(path)
    assert any("unreadable or truncated ids.npy" in p for p in verify_segment(path, None))


def test_id_count_that_disagrees_with_the_index(segment: tuple[Path, dict[str, str]]) -> None:
    path, sums = segment
    np.save(path / "ids.npy", np.arange(N - 5, dtype=np.int64))  # a valid, shorter file
    _corrupt_raised(path, None, "inconsistent")
    problems = verify_segment(path, None)
    assert any(f"holds {N - 5} ids but index.faiss holds {N} vectors" in p for p in problems)
    assert any("checksum mismatch" in p for p in verify_segment(path, sums))


def test_ids_that_disagree_with_the_index_id_map(segment: tuple[Path, dict[str, str]]) -> None:
    path, _ = segment
    np.save(path / "ids.npy", np.arange(1000, 1000 + N, dtype=np.int64)[::-1].copy())
    assert any("disagree on the ids" in p for p in verify_segment(path, None))


@pytest.mark.parametrize("name", ["vectors.npy", "meta.json", "index.faiss", LEXICAL_FILE])
def test_deleted_file(segment: tuple[Path, dict[str, str]], name: str) -> None:
    path, sums = segment
    (path / name).unlink()
    _corrupt_raised(path, sums, f"{name}: missing")
    assert f"{name}: missing" in verify_segment(path, sums)
    if name != "vectors.npy":  # not read by load_segment: only a checksum notices
        with pytest.raises(SegmentCorrupt):
            load_segment(path)
        assert verify_segment(path, None) != []
    else:
        assert any("vectors.npy" in p for p in verify_segment(path, None))


@pytest.mark.parametrize(
    "damage",
    ["overwrite-npz", "truncate-npz", "garbage-vocab", "truncate-vocab", "delete-vocab"],
)
def test_corrupt_lexical_files(segment: tuple[Path, dict[str, str]], damage: str) -> None:
    path, sums = segment
    npz, vocab = path / LEXICAL_FILE, path / LEXICAL_VOCAB_FILE
    if damage == "overwrite-npz":
        _overwrite_middle(npz, 1024)
    elif damage == "truncate-npz":
        _truncate(npz)
    elif damage == "garbage-vocab":
        vocab.write_bytes(b"\xff\xfe not json")
    elif damage == "truncate-vocab":
        _truncate(vocab)
    else:
        vocab.unlink()
    _corrupt_raised(path, sums, "lexical")
    _corrupt_raised(path, None, "lexical index")
    with pytest.raises(SegmentCorrupt, match="lexical"):
        read_lexical(path)
    with pytest.raises(SegmentCorrupt, match="lexical"):
        read_lexical(path, checksums=sums)
    assert any("lexical" in p for p in verify_segment(path, None))
    assert any("lexical" in p for p in verify_segment(path, sums))


def test_legacy_segment_without_checksums(segment: tuple[Path, dict[str, str]]) -> None:
    path, sums = segment
    (path / CHECKSUMS_FILE).unlink()  # written before checksums existed
    assert load_segment(path).ntotal == N
    assert load_segment(path, checksums=None).lexical is not None
    assert verify_segment(path, None) == []
    assert segment_checksums(path) == sums  # back-filled by hashing the files
    cache = SegmentCache(path.parent.parent)
    assert cache.get(CID, 1, [path.name], {path.name: None})[0].ntotal == N
    assert cache.get(CID, 2, [path.name], {})[0].ntotal == N  # not listed: not verified


def test_incomplete_or_malformed_checksums_are_refused(
    segment: tuple[Path, dict[str, str]],
) -> None:
    path, sums = segment
    partial = {k: v for k, v in sums.items() if k != "index.faiss"}
    _corrupt_raised(path, partial, r"no checksum for index\.faiss")
    assert any("no checksum for index.faiss" in p for p in verify_segment(path, partial))
    _corrupt_raised(path, {**sums, "../escape": sums["meta.json"]}, "invalid file name")
    _corrupt_raised(path, {**sums, "ids.npy": "sha256:beef"}, "invalid checksum")
    (path / CHECKSUMS_FILE).write_text("{not json")
    with pytest.raises(SegmentCorrupt, match=r"checksums\.json"):
        segment_checksums(path)


def test_a_corruption_is_logged_once_at_error(
    segment: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    path, sums = segment
    _overwrite_middle(path / "vectors.npy")
    caplog.set_level(logging.DEBUG, logger="indexer")
    for _ in range(3):
        with pytest.raises(SegmentCorrupt):
            load_segment(path, checksums=sums)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert path.name in errors[0].getMessage() and f"collection {CID}" in errors[0].getMessage()


def test_compaction_verifies_its_inputs(segment: tuple[Path, dict[str, str]]) -> None:
    path, sums = segment
    _overwrite_middle(path / "vectors.npy")
    drop = np.empty(0, dtype=np.int64)
    ids, _ = compact_vectors([path], drop)  # unverified: the damage would be baked in
    assert len(ids) == N
    with pytest.raises(SegmentCorrupt, match=r"vectors\.npy: checksum mismatch"):
        compact_vectors([path], drop, checksums=[sums])
    assert compact_lexical([path], drop, checksums=[sums]) is not None  # its files are intact
    _overwrite_middle(path / LEXICAL_FILE, 1024)
    with pytest.raises(SegmentCorrupt, match=r"lexical\.npz: checksum mismatch"):
        compact_lexical([path], drop, checksums=[sums])


def test_cache_tracks_degraded_collections(segment: tuple[Path, dict[str, str]]) -> None:
    path, sums = segment
    root, name = path.parent.parent, path.name
    good = (path / "index.faiss").read_bytes()
    cache = SegmentCache(root)
    assert cache.degraded() == {}

    _overwrite_middle(path / "index.faiss")
    with pytest.raises(SegmentCorrupt):
        cache.get(CID, 1, [name], {name: sums})
    assert set(cache.degraded()) == {CID}
    assert "index.faiss: checksum mismatch" in cache.degraded()[CID]
    with pytest.raises(SegmentCorrupt):  # still broken: still degraded
        cache.get(CID, 1, [name], {name: sums})
    assert set(cache.degraded()) == {CID}

    (path / "index.faiss").write_bytes(good)  # repaired
    assert cache.get(CID, 1, [name], {name: sums})[0].ntotal == N
    assert cache.degraded() == {}

    cache.invalidate(CID)
    (path / "ids.npy").unlink()
    with pytest.raises(SegmentCorrupt):
        cache.get(CID, 2, [name], {name: sums})
    assert set(cache.degraded()) == {CID}
    cache.invalidate(CID)  # e.g. the collection was deleted
    assert cache.degraded() == {}
