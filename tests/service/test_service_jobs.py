"""Ingest and compaction jobs: idempotent under retries, duplicates and crashes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from core.collections import create_collection
from core.db import session_scope
from core.documents import DocumentIn, upsert_documents
from core.jobs import create_job
from core.models import DocState, Document, Job, JobKind, JobState, Segment
from core.settings import Settings
from indexer import active_segments, read_vectors
from service import Container, build, jobs

pytestmark = pytest.mark.slow

TEXTS = [
    f"Document number {i} talks about {w} and {w2}."
    for i, (w, w2) in enumerate(
        (a, b)
        for a in ("rivers", "engines", "proteins", "poetry", "markets", "storms")
        for b in ("history", "design", "statistics", "music", "law", "travel", "food")
    )
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Container]:
    from core.migrate import upgrade

    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
    else:
        settings = Settings(data_dir=tmp_path, database_url=request.getfixturevalue("pg_url"))
    settings.index.segment_max_docs = 16  # several segments per job
    upgrade(settings.resolved_database_url)
    c = build(settings)
    yield c
    c.close()


def _job(rt: Container, texts: list[str] = TEXTS) -> tuple[int, str]:
    with session_scope(rt.sessions) as s:
        coll = create_collection(
            s, name=f"c{uuid.uuid4().hex[:8]}", embedder="all-MiniLM-L6-v2", dim=384
        )
        job = create_job(s, JobKind.INGEST, collection_id=coll.id)
        res = upsert_documents(
            s, coll, [DocumentIn(str(i), t) for i, t in enumerate(texts)], job_id=job.id
        )
        job.total = len(res.pending_ids)
        return coll.id, job.id


def _indexed_vector_ids(rt: Container, cid: int) -> np.ndarray:
    with session_scope(rt.sessions) as s:
        names = [seg.name for seg in active_segments(s, cid)]
    parts = [read_vectors(rt.segments_root / str(cid) / n)[0] for n in names]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def test_ingest_indexes_everything_once_and_rerun_is_noop(runtime: Container) -> None:
    cid, job_id = _job(runtime)
    assert jobs.run_ingest(runtime, job_id) == len(TEXTS)
    ids = _indexed_vector_ids(runtime, cid)
    assert len(ids) == len(TEXTS) == len(set(ids.tolist()))
    with session_scope(runtime.sessions) as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.SUCCEEDED and job.done == len(TEXTS)
        assert s.scalar(select(func.count()).where(Segment.collection_id == cid)) == 3  # 42/16
    # A redelivered message after success: nothing new.
    assert jobs.run_ingest(runtime, job_id) == 0
    # A retry after a failure in the middle (job state reset): still nothing duplicated.
    with session_scope(runtime.sessions) as s:
        s.get(Job, job_id).state = JobState.RUNNING
    assert jobs.run_ingest(runtime, job_id) == 0
    assert len(_indexed_vector_ids(runtime, cid)) == len(TEXTS)


def test_duplicate_concurrent_tasks_do_not_duplicate_vectors(runtime: Container) -> None:
    cid, job_id = _job(runtime)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            jobs.run_ingest(runtime, job_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = _indexed_vector_ids(runtime, cid)
    assert sorted(ids.tolist()) == sorted(set(ids.tolist())) and len(ids) == len(TEXTS)
    with session_scope(runtime.sessions) as s:
        states = s.scalars(select(Document.state).where(Document.collection_id == cid)).all()
        assert set(states) == {DocState.INDEXED}


def test_crash_before_commit_leaves_nothing_visible(
    runtime: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, job_id = _job(runtime)

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("worker died before the manifest commit")

    monkeypatch.setattr(jobs, "commit_segment", boom)
    with pytest.raises(RuntimeError):
        jobs.run_ingest(runtime, job_id)
    with session_scope(runtime.sessions) as s:
        assert active_segments(s, cid) == []
        assert set(s.scalars(select(Document.state).where(Document.collection_id == cid))) == {
            DocState.PENDING
        }
    seg_dir = runtime.segments_root / str(cid)
    assert not seg_dir.exists() or not any(seg_dir.iterdir())  # the written files were removed
    monkeypatch.undo()
    assert jobs.run_ingest(runtime, job_id) == len(TEXTS)  # the retry completes the job


def test_compaction_merges_and_drops_tombstones(runtime: Container) -> None:
    cid, job_id = _job(runtime)
    jobs.run_ingest(runtime, job_id)
    with session_scope(runtime.sessions) as s:
        gone = s.scalars(
            select(Document).where(
                Document.collection_id == cid, Document.external_id.in_(["0", "1"])
            )
        ).all()
        for d in gone:
            d.state = DocState.DELETED
        cjob = create_job(s, JobKind.COMPACT, collection_id=cid, params={"index_spec": "IVF4,Flat"})
        cjob_id = cjob.id
    assert jobs.run_compact(runtime, cjob_id) == len(TEXTS) - 2
    with session_scope(runtime.sessions) as s:
        segs = active_segments(s, cid)
        assert len(segs) == 1 and segs[0].index_spec == "IVF4,Flat"
        assert s.get(Job, cjob_id).state == JobState.SUCCEEDED
        retired = s.scalars(
            select(Segment).where(Segment.collection_id == cid, Segment.active.is_(False))
        ).all()
        assert len(retired) == 3
    ids = _indexed_vector_ids(runtime, cid)
    assert len(ids) == len(TEXTS) - 2


def _compact(rt: Container, cid: int, spec: str) -> tuple[int, Job]:
    with session_scope(rt.sessions) as s:
        job_id = create_job(s, JobKind.COMPACT, collection_id=cid, params={"index_spec": spec}).id
    n = jobs.run_compact(rt, job_id)
    with session_scope(rt.sessions) as s:
        return n, s.get(Job, job_id)


def test_compaction_falls_back_to_flat_when_too_few_to_train(runtime: Container) -> None:
    cid, job_id = _job(runtime)
    jobs.run_ingest(runtime, job_id)
    n, job = _compact(runtime, cid, "IVF256,Flat")
    assert n == len(TEXTS) and job.state == JobState.SUCCEEDED
    assert job.params["built_spec"] == "Flat"


def test_compaction_of_a_fully_deleted_collection_retires_everything(runtime: Container) -> None:
    cid, job_id = _job(runtime)
    jobs.run_ingest(runtime, job_id)
    with session_scope(runtime.sessions) as s:
        for d in s.scalars(select(Document).where(Document.collection_id == cid)):
            d.state = DocState.DELETED
    n, job = _compact(runtime, cid, "Flat")
    assert n == 0 and job.state == JobState.SUCCEEDED
    with session_scope(runtime.sessions) as s:
        assert active_segments(s, cid) == []


class _Recorder:
    """A dispatcher that only records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def submit(self, kind: JobKind, job_id: str) -> None:
        self.sent.append((str(kind), job_id))

    def close(self) -> None:
        pass


def _with_recorder(c: Container) -> _Recorder:
    recorder = _Recorder()
    c.__dict__["dispatcher"] = recorder
    return recorder


def test_reaper_resends_a_job_whose_worker_lease_expired(runtime: Container) -> None:
    from datetime import timedelta

    from core.models import utcnow

    _, job_id = _job(runtime)
    recorder = _with_recorder(runtime)
    with session_scope(runtime.sessions) as s:
        job = s.get(Job, job_id)
        job.state, job.attempts = JobState.RUNNING, 1
        job.lease_owner = "dead-host:1:1"
        job.lease_expires_at = utcnow() + timedelta(seconds=30)
    assert jobs.reap(runtime).expired == []  # the lease is still valid: leave it alone
    with session_scope(runtime.sessions) as s:
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    report = jobs.reap(runtime)
    assert report.expired == [job_id] and recorder.sent == [("ingest", job_id)]
    assert jobs.reap(runtime).expired == []  # once only
    with session_scope(runtime.sessions) as s:
        assert s.get(Job, job_id).state == JobState.QUEUED
    assert jobs.run_ingest(runtime, job_id) == len(TEXTS)
    with session_scope(runtime.sessions) as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.SUCCEEDED and job.attempts == 2 and job.lease_owner is None


def test_reaper_resends_a_queued_job_with_a_lost_message(runtime: Container) -> None:
    _, job_id = _job(runtime)  # committed, never dispatched (the API died before sending)
    recorder = _with_recorder(runtime)
    assert jobs.reap(runtime).resent == []  # younger than requeue_after_s
    assert jobs.reap(runtime, requeue_after_s=0.0).resent == [job_id]
    assert recorder.sent == [("ingest", job_id)]


def test_reaper_gives_up_after_max_attempts(runtime: Container) -> None:
    from datetime import timedelta

    from core.models import utcnow

    _, job_id = _job(runtime)
    _with_recorder(runtime)
    with session_scope(runtime.sessions) as s:
        job = s.get(Job, job_id)
        job.state, job.attempts = JobState.RUNNING, runtime.settings.jobs.max_attempts
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
    assert jobs.reap(runtime).given_up == [job_id]
    with session_scope(runtime.sessions) as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.FAILED and "attempts" in (job.error or "")


def test_a_running_job_stops_when_cancelled(runtime: Container) -> None:
    from core.jobs import cancel_jobs

    cid, job_id = _job(runtime)
    seen: list[int] = []
    real_commit = jobs._commit_chunk

    def commit_then_cancel(*args: object, **kwargs: object) -> int:
        n = real_commit(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(n)
        with session_scope(runtime.sessions) as s:
            cancel_jobs(s, cid)
        return n

    jobs._commit_chunk = commit_then_cancel  # type: ignore[assignment]
    try:
        assert jobs.run_ingest(runtime, job_id) == 0
    finally:
        jobs._commit_chunk = real_commit  # type: ignore[assignment]
    assert seen == [16]  # one chunk, then it stopped
    with session_scope(runtime.sessions) as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.CANCELLED and job.lease_owner is None
