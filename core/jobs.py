"""Job records: the progress and outcome of background work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.errors import JobNotFound
from core.models import Document, Job, JobKind, JobState, utcnow


def create_job(
    session: Session,
    kind: JobKind,
    *,
    collection_id: int | None,
    total: int = 0,
    params: dict[str, Any] | None = None,
) -> Job:
    job = Job(kind=kind, collection_id=collection_id, total=total, params=params or {})
    job.state = JobState.QUEUED
    job.done = 0
    job.skipped = 0
    job.attempts = 0
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"Job {job_id!r} does not exist")
    return job


def list_jobs(session: Session, *, collection_id: int | None = None, limit: int = 50) -> list[Job]:
    stmt = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if collection_id is not None:
        stmt = stmt.where(Job.collection_id == collection_id)
    return list(session.scalars(stmt))


def mark_running(session: Session, job: Job) -> None:
    job.state = JobState.RUNNING
    job.attempts = (job.attempts or 0) + 1
    job.error = None
    if job.started_at is None:
        job.started_at = utcnow()


def set_progress(session: Session, job_id: str, done: int) -> None:
    """Record how many of the job's documents are done (embedded or committed)."""
    session.execute(update(Job).where(Job.id == job_id).values(done=done))


def committed_count(session: Session, job_id: str) -> int:
    """Documents of ``job_id`` that made it into a segment (deleted ones included)."""
    n = session.scalar(
        select(func.count()).where(Document.job_id == job_id, Document.segment_id.is_not(None))
    )
    return int(n or 0)


def finish(session: Session, job: Job, *, error: str | None = None) -> None:
    job.state = JobState.FAILED if error else JobState.SUCCEEDED
    job.error = error
    job.finished_at = utcnow()
    if job.started_at is not None:
        started = job.started_at
        if started.tzinfo is None:  # SQLite returns naive datetimes
            started = started.replace(tzinfo=job.finished_at.tzinfo)
        job.duration_s = (job.finished_at - started).total_seconds()
