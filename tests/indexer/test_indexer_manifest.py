from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_session_factory, session_scope
from core.errors import CollectionNotFound, Conflict, InvalidRequest, QuarryError
from core.migrate import upgrade
from core.models import Collection, DocState, Document, Segment
from indexer.manifest import (
    active_segments,
    commit_segment,
    lock_collection,
    replace_segments,
    retire_segments,
    tombstone_ids,
)

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "db.sqlite")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A private database on the shared test server, dropped afterwards."""
    admin = create_engine(
        PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"quarry_test_indexer_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"Postgres is not reachable at {PG_ADMIN_URL}: {exc.orig}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def factory(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue(f"{request.param}_url")
    upgrade(url)
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _collection(factory: sessionmaker[Session], n_docs: int) -> tuple[int, list[int]]:
    with session_scope(factory) as s:
        coll = Collection(name=f"c-{uuid.uuid4().hex[:8]}", embedder="test", dim=4)
        s.add(coll)
        s.flush()
        docs = [
            Document(
                collection_id=coll.id,
                external_id=f"d{i}",
                text=f"doc {i}",
                content_hash=f"{i:064x}",
            )
            for i in range(n_docs)
        ]
        s.add_all(docs)
        s.flush()
        return coll.id, [d.id for d in docs]


def _states(s: Session, ids: list[int]) -> dict[int, tuple[str, int | None]]:
    rows = s.execute(
        select(Document.id, Document.state, Document.segment_id).where(Document.id.in_(ids))
    )
    return {r.id: (r.state, r.segment_id) for r in rows}


def _delete(factory: sessionmaker[Session], ids: list[int]) -> None:
    with session_scope(factory) as s:
        for doc in s.scalars(select(Document).where(Document.id.in_(ids))):
            doc.state = DocState.DELETED


def _commit(
    factory: sessionmaker[Session], cid: int, name: str, ids: list[int] | np.ndarray
) -> int:
    with session_scope(factory) as s:
        coll = lock_collection(s, cid)
        seg = commit_segment(
            s, coll, name=name, spec="Flat", n_vectors=len(ids), doc_ids=ids, job_id="job1"
        )
        return seg.id


def test_commit_segment(factory: sessionmaker[Session]) -> None:
    cid, ids = _collection(factory, 6)
    _delete(factory, [ids[5]])  # deleted while it was being embedded
    seg_id = _commit(factory, cid, "seg-1", np.asarray(ids[:3] + ids[5:]))

    with session_scope(factory) as s:
        coll = s.get(Collection, cid)
        assert coll is not None and coll.manifest_version == 1
        segs = active_segments(s, cid)
        assert [(g.id, g.name, g.n_vectors, g.active, g.created_by_job) for g in segs] == [
            (seg_id, "seg-1", 4, True, "job1")
        ]
        states = _states(s, ids)
        assert [states[i] for i in ids[:3]] == [("indexed", seg_id)] * 3
        assert [states[i] for i in ids[3:5]] == [("pending", None)] * 2
        assert states[ids[5]] == ("deleted", seg_id)  # its vector is in the segment: tombstone
        np.testing.assert_array_equal(tombstone_ids(s, cid), [ids[5]])

    _delete(factory, [ids[0], ids[3]])  # ids[3] was never indexed: no tombstone needed
    with session_scope(factory) as s:
        tombs = tombstone_ids(s, cid)
        assert tombs.dtype == np.int64
        np.testing.assert_array_equal(tombs, sorted([ids[0], ids[5]]))


def test_commit_segment_refuses_bad_input(factory: sessionmaker[Session]) -> None:
    cid, ids = _collection(factory, 4)
    other_cid, other_ids = _collection(factory, 1)
    _commit(factory, cid, "seg-1", ids[:2])
    with pytest.raises(Conflict, match="already in a segment"):
        _commit(factory, cid, "seg-2", ids[1:3])
    with pytest.raises(InvalidRequest, match=f"not in collection {cid}"):
        _commit(factory, cid, "seg-3", [ids[3], other_ids[0]])
    with (
        pytest.raises(InvalidRequest, match="has 2 ids but the segment has 3"),
        session_scope(factory) as s,
    ):
        commit_segment(
            s,
            lock_collection(s, cid),
            name="x",
            spec="Flat",
            n_vectors=3,
            doc_ids=ids[2:4],
            job_id=None,
        )
    with pytest.raises(CollectionNotFound), session_scope(factory) as s:
        lock_collection(s, 987654)
    with session_scope(factory) as s:  # nothing of the failed attempts was committed
        assert [g.name for g in active_segments(s, cid)] == ["seg-1"]
        assert s.get(Collection, cid).manifest_version == 1  # type: ignore[union-attr]
        assert _states(s, [ids[3]])[ids[3]] == ("pending", None)
        assert active_segments(s, other_cid) == []


def test_replace_segments(factory: sessionmaker[Session]) -> None:
    cid, ids = _collection(factory, 10)
    _commit(factory, cid, "seg-1", ids[:4])
    _commit(factory, cid, "seg-2", ids[4:8])
    seg3 = _commit(factory, cid, "seg-3", ids[8:])  # not compacted
    _delete(factory, [ids[1], ids[5], ids[9]])
    # The compactor read the tombstones {1, 5, 9} and drops 1 and 5; doc 2 is deleted while
    # it runs, so it is kept in the new segment and must stay a tombstone there.
    kept = [ids[0], ids[2], ids[3], ids[4], ids[6], ids[7]]
    _delete(factory, [ids[2]])

    with session_scope(factory) as s:
        coll = lock_collection(s, cid)
        retired = [g for g in active_segments(s, cid) if g.name in ("seg-1", "seg-2")]
        new = replace_segments(
            s,
            coll,
            retired=retired,
            name="seg-4",
            spec="IVF4,Flat",
            n_vectors=len(kept),
            kept_doc_ids=np.asarray(kept),
            job_id="compact1",
        )
        new_id = new.id

    with session_scope(factory) as s:
        assert s.get(Collection, cid).manifest_version == 4  # type: ignore[union-attr]
        assert [(g.name, g.index_spec) for g in active_segments(s, cid)] == [
            ("seg-3", "Flat"),
            ("seg-4", "IVF4,Flat"),
        ]
        old = s.scalars(select(Segment).where(Segment.name.in_(["seg-1", "seg-2"]))).all()
        assert all(not g.active and g.retired_at is not None for g in old)
        states = _states(s, ids)
        assert all(states[i] == ("indexed", new_id) for i in kept if i != ids[2])
        assert states[ids[2]] == ("deleted", new_id)
        assert states[ids[1]] == states[ids[5]] == ("deleted", None)  # purged
        assert states[ids[9]] == ("deleted", seg3)
        np.testing.assert_array_equal(tombstone_ids(s, cid), [ids[2], ids[9]])


def test_replace_segments_refuses_unsafe_swaps(factory: sessionmaker[Session]) -> None:
    cid, ids = _collection(factory, 6)
    _commit(factory, cid, "seg-1", ids[:3])
    _commit(factory, cid, "seg-2", ids[3:])

    def replace(names: list[str], kept: list[int]) -> None:
        with session_scope(factory) as s:
            coll = lock_collection(s, cid)
            retired = s.scalars(select(Segment).where(Segment.name.in_(names))).all()
            replace_segments(
                s,
                coll,
                retired=retired,
                name="new",
                spec="Flat",
                n_vectors=len(kept),
                kept_doc_ids=kept,
                job_id=None,
            )

    with pytest.raises(QuarryError, match="would drop 1 live documents"):
        replace(["seg-1"], ids[:2])
    with pytest.raises(InvalidRequest, match="not in the retired segments"):
        replace(["seg-1"], ids[:4])
    replace(["seg-1"], ids[:3])
    with pytest.raises(Conflict, match="already retired"):
        replace(["seg-1", "seg-2"], ids)
    with session_scope(factory) as s:
        assert [g.name for g in active_segments(s, cid)] == ["seg-2", "new"]


def test_retire_segments_when_everything_was_deleted(factory: sessionmaker[Session]) -> None:
    cid, ids = _collection(factory, 4)
    _commit(factory, cid, "seg-1", ids[:2])
    _commit(factory, cid, "seg-2", ids[2:])
    _delete(factory, ids[:3])
    with session_scope(factory) as s:
        coll = lock_collection(s, cid)
        with pytest.raises(QuarryError, match="live documents"):
            retire_segments(s, coll, retired=active_segments(s, cid))
    with session_scope(factory) as s:
        coll = lock_collection(s, cid)
        retire_segments(s, coll, retired=[g for g in active_segments(s, cid) if g.name == "seg-1"])
    with session_scope(factory) as s:
        assert [g.name for g in active_segments(s, cid)] == ["seg-2"]
        np.testing.assert_array_equal(tombstone_ids(s, cid), [ids[2]])
        assert s.get(Collection, cid).manifest_version == 3  # type: ignore[union-attr]


def test_checksums_are_stored_on_segment_rows(factory: sessionmaker[Session]) -> None:
    cid, ids = _collection(factory, 4)
    sums = {"index.faiss": "sha256:" + "a" * 64, "meta.json": "sha256:" + "b" * 64}
    with session_scope(factory) as s:
        coll = lock_collection(s, cid)
        commit_segment(
            s, coll, name="seg-1", spec="Flat", n_vectors=2, doc_ids=ids[:2], job_id=None,
            checksums=sums,
        )  # fmt: skip
    _commit(factory, cid, "legacy", ids[2:])  # no checksums: stored as NULL
    with session_scope(factory) as s:
        assert {g.name: g.checksums for g in active_segments(s, cid)} == {
            "seg-1": sums,
            "legacy": None,
        }
        coll = lock_collection(s, cid)
        new_sums = {"index.faiss": "sha256:" + "c" * 64}
        replace_segments(
            s, coll, retired=active_segments(s, cid), name="seg-2", spec="Flat", n_vectors=4,
            kept_doc_ids=ids, job_id=None, checksums=new_sums,
        )  # fmt: skip
    with session_scope(factory) as s:
        assert [(g.name, g.checksums) for g in active_segments(s, cid)] == [("seg-2", new_sums)]
    with (
        pytest.raises(InvalidRequest, match="invalid checksum"),
        session_scope(factory) as s,
    ):
        commit_segment(
            s, lock_collection(s, cid), name="bad", spec="Flat", n_vectors=0, doc_ids=[],
            job_id=None, checksums={"index.faiss": "md5:123"},
        )  # fmt: skip
