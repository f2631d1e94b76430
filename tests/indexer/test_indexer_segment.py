from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from core.errors import InvalidRequest, QuarryError, SegmentCorrupt
from indexer import segment as segment_mod
from indexer.segment import (
    delete_segment_files,
    load_segment,
    new_segment_name,
    orphan_segment_dirs,
    read_meta,
    read_vectors,
    write_segment,
)
from indexer.spec import build_index

DIM = 32
MakeVectors = Callable[..., np.ndarray]


def _write(root: Path, x: np.ndarray, ids: np.ndarray, spec: str = "Flat") -> Path:
    return write_segment(
        root, 7, new_segment_name(), spec=spec, metric="cosine", vectors=x, ids=ids
    )


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW16"])
def test_round_trip(tmp_path: Path, make_vectors: MakeVectors, spec: str) -> None:
    x = make_vectors(300)
    ids = np.arange(100, 400, dtype=np.int64)
    path = _write(tmp_path, x, ids, spec)

    assert path.parent == tmp_path / "7"
    assert sorted(p.name for p in path.iterdir()) == [
        "checksums.json",
        "ids.npy",
        "index.faiss",
        "meta.json",
        "vectors.npy",
    ]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dir left
    meta = read_meta(path)
    assert meta["spec"] == spec and meta["metric"] == "cosine"
    assert meta["dim"] == DIM and meta["n"] == 300 and meta["format_version"] == 1

    stored_ids, stored = read_vectors(path)
    np.testing.assert_array_equal(stored_ids, ids)
    np.testing.assert_array_equal(stored, x)  # raw vectors, not the normalised ones

    seg = load_segment(path)
    assert seg.name == path.name and seg.ntotal == 300 and seg.dim == DIM
    assert seg.metric == "cosine"
    np.testing.assert_array_equal(seg.ids, ids)
    q = x[:20] / np.linalg.norm(x[:20], axis=1, keepdims=True)
    _, labels = seg.index.search(q, 1)
    assert (labels[:, 0] == ids[:20]).mean() >= 0.95


def test_prebuilt_index_is_used(tmp_path: Path, make_vectors: MakeVectors) -> None:
    x = make_vectors(50)
    ids = np.arange(50)
    index = build_index("Flat", DIM, "l2", x, ids)
    path = write_segment(
        tmp_path, 1, "abc", spec="Flat", metric="l2", vectors=x, ids=ids, index=index
    )
    assert load_segment(path).ntotal == 50
    with pytest.raises(InvalidRequest, match="holds 50 vectors"):
        write_segment(
            tmp_path, 1, "abd", spec="Flat", metric="l2", vectors=x[:10], ids=ids[:10], index=index
        )


def test_existing_segment_is_a_bug(tmp_path: Path, make_vectors: MakeVectors) -> None:
    x = make_vectors(10)
    write_segment(tmp_path, 1, "seg", spec="Flat", metric="l2", vectors=x, ids=np.arange(10))
    with pytest.raises(QuarryError, match="already exists") as info:
        write_segment(tmp_path, 1, "seg", spec="Flat", metric="l2", vectors=x, ids=np.arange(10))
    assert not isinstance(info.value, SegmentCorrupt)  # a bug, not a damaged file


@pytest.mark.parametrize("name", ["", "../evil", ".hidden", "a/b", "x" * 65])
def test_bad_names_are_refused(tmp_path: Path, make_vectors: MakeVectors, name: str) -> None:
    with pytest.raises(InvalidRequest, match="Invalid segment name"):
        write_segment(
            tmp_path, 1, name, spec="Flat", metric="l2", vectors=make_vectors(3), ids=np.arange(3)
        )


def test_crash_before_rename_leaves_only_an_orphan(
    tmp_path: Path, make_vectors: MakeVectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _write(tmp_path, make_vectors(10), np.arange(10))

    def crash(*_args: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "rename", crash)
    # A killed process runs no cleanup: keep the temp dir as a real crash would.
    monkeypatch.setattr(segment_mod, "_remove_tree", lambda _path: None)
    name = new_segment_name()
    with pytest.raises(OSError, match="simulated crash"):
        write_segment(
            tmp_path, 7, name, spec="Flat", metric="l2", vectors=make_vectors(5), ids=np.arange(5)
        )
    monkeypatch.undo()

    assert not (tmp_path / "7" / name).exists()
    orphans = orphan_segment_dirs(tmp_path, 7, {live.name})
    assert len(orphans) == 1
    assert orphans[0].name.startswith(f".{name}.tmp-")
    assert orphan_segment_dirs(tmp_path, 7, {live.name}, min_age_s=3600) == []
    delete_segment_files(orphans[0])
    assert orphan_segment_dirs(tmp_path, 7, {live.name}) == []
    assert load_segment(live).ntotal == 10  # the live segment is untouched


def test_failed_write_cleans_up(
    tmp_path: Path, make_vectors: MakeVectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(OSError, match="disk full"):
        write_segment(
            tmp_path, 3, "seg", spec="Flat", metric="l2", vectors=make_vectors(5), ids=np.arange(5)
        )
    assert list((tmp_path / "3").iterdir()) == []


def test_uncommitted_segment_is_an_orphan(tmp_path: Path, make_vectors: MakeVectors) -> None:
    a = _write(tmp_path, make_vectors(5), np.arange(5))
    b = _write(tmp_path, make_vectors(5, seed=1), np.arange(5, 10))
    (tmp_path / "7" / "not-a-segment.txt").write_text("keep me")
    assert orphan_segment_dirs(tmp_path, 7, {a.name}) == [b]
    assert orphan_segment_dirs(tmp_path, 7, {a.name, b.name}) == []
    assert orphan_segment_dirs(tmp_path, 99, set()) == []


def test_delete_segment_files_is_careful(tmp_path: Path, make_vectors: MakeVectors) -> None:
    path = _write(tmp_path, make_vectors(5), np.arange(5))
    other = tmp_path / "7" / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(QuarryError, match="not a segment directory"):
        delete_segment_files(other)
    with pytest.raises(QuarryError, match="not a segment directory"):
        delete_segment_files(tmp_path / "7")  # the collection directory is not a segment
    assert (other / "notes.txt").read_text() == "keep me"
    delete_segment_files(path)
    assert not path.exists()
    delete_segment_files(path)  # already gone: fine


def test_new_segment_names_are_unique_and_sortable() -> None:
    names = [new_segment_name() for _ in range(200)]
    assert len(set(names)) == 200
    assert all(len(n) == 32 and n.isalnum() for n in names)
    assert [n[:12] for n in names] == sorted(n[:12] for n in names)


def test_inconsistent_or_foreign_segments_are_refused(
    tmp_path: Path, make_vectors: MakeVectors
) -> None:
    path = _write(tmp_path, make_vectors(5), np.arange(5))
    np.save(path / "ids.npy", np.arange(4, dtype=np.int64))
    with pytest.raises(SegmentCorrupt, match="inconsistent"):
        load_segment(path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(SegmentCorrupt, match="format version 99"):
        read_meta(path)
    with pytest.raises(SegmentCorrupt, match=r"meta\.json"):
        read_meta(tmp_path)


def test_load_without_gpu_keeps_cpu_index(tmp_path: Path, make_vectors: MakeVectors) -> None:
    path = _write(tmp_path, make_vectors(5), np.arange(5))
    seg = load_segment(path, use_gpu=True)  # no GPU here: stays on the CPU
    assert isinstance(seg.index, faiss.IndexIDMap2)
