"""Document upsert is idempotent; updates tombstone the old row; filters select by metadata."""

from __future__ import annotations

import pytest

from core.collections import create_collection
from core.db import make_engine, make_session_factory, session_scope
from core.documents import DocumentIn, delete_documents, filtered_ids, upsert_documents
from core.errors import InvalidRequest
from core.models import DocState, Document


@pytest.fixture
def sessions(sqlite_settings):
    engine = make_engine(sqlite_settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_upsert_states(sessions) -> None:
    with session_scope(sessions) as s:
        coll = create_collection(s, name="c", embedder="m", dim=4)
        docs = [DocumentIn("a", "alpha", {"k": 1}), DocumentIn("b", "beta", {"k": 2})]
        r1 = upsert_documents(s, coll, docs, job_id="j1")
        assert (r1.created, r1.updated, r1.unchanged) == (2, 0, 0)
        r2 = upsert_documents(s, coll, docs, job_id="j2")
        # still pending: the same rows move to the new job, nothing is duplicated
        assert (r2.created, r2.unchanged) == (0, 2) and sorted(r2.pending_ids) == sorted(
            r1.pending_ids
        )
        s.query(Document).update({Document.state: DocState.INDEXED})
        r3 = upsert_documents(s, coll, [DocumentIn("a", "alpha v2", {"k": 1})], job_id="j3")
        assert (r3.created, r3.updated) == (0, 1)
        rows = s.query(Document).filter_by(external_id="a").order_by(Document.id).all()
        assert [r.state for r in rows] == [DocState.DELETED, DocState.PENDING]
        assert coll.manifest_version == 1
        with pytest.raises(InvalidRequest, match="Duplicate"):
            upsert_documents(s, coll, [DocumentIn("x", "1"), DocumentIn("x", "2")], job_id="j4")


def test_filters_and_delete(sessions) -> None:
    with session_scope(sessions) as s:
        coll = create_collection(s, name="c", embedder="m", dim=4)
        upsert_documents(
            s,
            coll,
            [
                DocumentIn("a", "x", {"lang": "en", "year": 2020, "ok": True}),
                DocumentIn("b", "y", {"lang": "fr", "year": 2021, "ok": False}),
                DocumentIn("c", "z", {"lang": "en", "year": 2021}),
            ],
            job_id="j",
        )
        s.query(Document).update({Document.state: DocState.INDEXED})
        ids = {d.external_id: d.id for d in s.query(Document)}
        assert set(filtered_ids(s, coll.id, {"lang": "en"})) == {ids["a"], ids["c"]}
        assert set(filtered_ids(s, coll.id, {"lang": "en", "year": 2021})) == {ids["c"]}
        assert set(filtered_ids(s, coll.id, {"ok": False})) == {ids["b"]}
        assert set(filtered_ids(s, coll.id, {"year": [2020, 2021]})) == set(ids.values())
        assert delete_documents(s, coll, ["a", "a", "zzz"]) == 1
        assert set(filtered_ids(s, coll.id, {"lang": "en"})) == {ids["c"]}
        with pytest.raises(InvalidRequest):
            filtered_ids(s, coll.id, {"lang": {"$ne": "en"}})


@pytest.mark.services
def test_ids_with_nul_are_not_found_on_postgres(pg_url: str) -> None:
    """Postgres refuses NUL in SQL text: such names and ids cannot exist, so they are 404s
    (never a driver error) and ingest refuses them up front."""
    from pydantic import ValidationError

    from core.collections import get_collection
    from core.documents import get_document
    from core.errors import CollectionNotFound, DocumentNotFound, JobNotFound
    from core.jobs import get_job
    from core.migrate import upgrade

    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            coll = create_collection(s, name="nul-test", embedder="m", dim=4)
            with pytest.raises(CollectionNotFound):
                get_collection(s, "nul\x00test")
            with pytest.raises(DocumentNotFound):
                get_document(s, coll.id, "a\x00b")
            with pytest.raises(JobNotFound):
                get_job(s, "ab\x00cd")
            assert delete_documents(s, coll, ["a\x00b"]) == 0
            with pytest.raises(InvalidRequest, match="NUL"):
                filtered_ids(s, coll.id, {"k": "a\x00"})
            assert len(filtered_ids(s, coll.id, {"k": 2**70})) == 0
    finally:
        engine.dispose()
    for bad in (
        {"id": "a\x00", "text": "t"},
        {"id": "a", "text": "t", "metadata": {"x": float("nan")}},
    ):
        with pytest.raises(ValidationError):
            DocumentIn(**bad)
