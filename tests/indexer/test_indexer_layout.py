"""Segment directory layout: dropping collections and collecting garbage, safely."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import QuarryError
from indexer.segment import (
    collect_garbage,
    drop_collection,
    new_segment_name,
    stray_collection_dirs,
    write_segment,
)

MakeVectors = Callable[..., np.ndarray]


def _segment(root: Path, cid: int, make_vectors: MakeVectors, name: str | None = None) -> Path:
    return write_segment(
        root,
        cid,
        name or new_segment_name(),
        spec="Flat",
        metric="l2",
        vectors=make_vectors(5),
        ids=np.arange(5),
    )


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_drop_collection(tmp_path: Path, make_vectors: MakeVectors) -> None:
    a = _segment(tmp_path, 3, make_vectors)
    _segment(tmp_path, 3, make_vectors)
    (tmp_path / "3" / ".x.tmp-123").mkdir()  # a crashed write
    other = _segment(tmp_path, 4, make_vectors)
    drop_collection(tmp_path, 3)
    assert not (tmp_path / "3").exists() and not a.exists()
    assert other.is_dir()  # other collections are untouched
    drop_collection(tmp_path, 3)  # idempotent
    drop_collection(tmp_path, 99)  # never had segments


def test_drop_collection_refuses_a_path_outside_the_root(
    tmp_path: Path, make_vectors: MakeVectors
) -> None:
    root, outside = tmp_path / "segments", tmp_path / "elsewhere"
    root.mkdir()
    precious = _segment(outside, 0, make_vectors).parent  # looks like a collection directory
    (root / "5").symlink_to(precious, target_is_directory=True)
    with pytest.raises(QuarryError, match="not a directory") as info:
        drop_collection(root, 5)
    assert info.value.details["collection_id"] == 5
    assert precious.is_dir() and any(precious.iterdir())
    assert (root / "5").is_symlink()

    (root / "6").write_text("a file")
    with pytest.raises(QuarryError, match="not a directory"):
        drop_collection(root, 6)
    assert (root / "6").is_file()

    with pytest.raises(QuarryError, match="collection_id"):
        drop_collection(root, -1)


def test_drop_collection_refuses_foreign_content(tmp_path: Path, make_vectors: MakeVectors) -> None:
    seg = _segment(tmp_path, 2, make_vectors)
    (tmp_path / "2" / "backup.tar").write_text("not ours")
    with pytest.raises(QuarryError, match=r"not segments.*backup\.tar"):
        drop_collection(tmp_path, 2)
    assert seg.is_dir()  # refused before deleting anything
    (seg / "notes.txt").write_text("not ours either")
    (tmp_path / "2" / "backup.tar").unlink()
    with pytest.raises(QuarryError, match="not segments"):
        drop_collection(tmp_path, 2)
    (seg / "notes.txt").unlink()
    drop_collection(tmp_path, 2)
    assert not (tmp_path / "2").exists()


def test_collect_garbage(tmp_path: Path, make_vectors: MakeVectors) -> None:
    live = _segment(tmp_path, 1, make_vectors)
    retired = _segment(tmp_path, 1, make_vectors)
    uncommitted = _segment(tmp_path, 1, make_vectors)  # written a moment ago
    tmp = tmp_path / "1" / f".{new_segment_name()}.tmp-abc"
    tmp.mkdir()
    (tmp / "index.faiss").write_bytes(b"partial")
    half_deleted = _segment(tmp_path, 1, make_vectors)
    (half_deleted / "meta.json").unlink()  # an earlier deletion crashed half way
    emptied = tmp_path / "1" / new_segment_name()
    emptied.mkdir()  # ... or crashed just before removing the directory itself
    foreign = tmp_path / "1" / "precious"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep")
    for path in (live, retired, tmp, half_deleted, emptied, foreign):
        _age(path, 3600)

    removed = collect_garbage(tmp_path, 1, {live.name}, min_age_s=600)
    assert sorted(removed) == sorted([retired, tmp, half_deleted, emptied])
    assert live.is_dir() and uncommitted.is_dir()  # in keep / too young
    assert (foreign / "data.txt").read_text() == "keep"  # not ours: skipped, logged
    assert collect_garbage(tmp_path, 1, {live.name}, min_age_s=600) == []
    assert collect_garbage(tmp_path, 42, set(), min_age_s=0) == []


def test_stray_collection_dirs(tmp_path: Path, make_vectors: MakeVectors) -> None:
    for cid in (1, 2, 10):
        _segment(tmp_path, cid, make_vectors)
    (tmp_path / "notes").mkdir()
    (tmp_path / "007").mkdir()  # not a name collection_dir() makes
    (tmp_path / "11").write_text("a file")
    for cid in (1, 2, 10):
        _age(tmp_path / str(cid), 3600)
    assert stray_collection_dirs(tmp_path, {1}) == [tmp_path / "2", tmp_path / "10"]
    _segment(tmp_path, 12, make_vectors)  # created after the live ids were read
    assert stray_collection_dirs(tmp_path, {1}, min_age_s=600) == [
        tmp_path / "2",
        tmp_path / "10",
    ]
    for path in stray_collection_dirs(tmp_path, {1, 12}):
        drop_collection(tmp_path, int(path.name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["007", "1", "11", "12", "notes"]
    assert stray_collection_dirs(tmp_path / "missing", set()) == []
