"""Job records: the progress and outcome of background work."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.errors import JobNotFound
from core.models import FINISHED_STATES, Document, Job, JobKind, JobState, utcnow


def create_job(
    session: Session,
    kind: JobKind,
    *,
    collection_id: int | None,
    collection_name: str | None = None,
    total: int = 0,
    params: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        kind=kind,
        collection_id=collection_id,
        collection_name=collection_name,
        total=total,
        params=params or {},
    )
    job.state = JobState.QUEUED
    job.done = 0
    job.skipped = 0
    job.attempts = 0
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    if not job_id.isalnum():  # ids are hex; anything else cannot exist (and NUL breaks SQL)
        raise JobNotFound(f"Job {job_id!r} does not exist")
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"Job {job_id!r} does not exist")
    return job


def list_jobs(session: Session, *, collection_id: int | None = None, limit: int = 50) -> list[Job]:
    stmt = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if collection_id is not None:
        stmt = stmt.where(Job.collection_id == collection_id)
    return list(session.scalars(stmt))


def claim(session: Session, job_id: str, owner: str, lease_s: float) -> bool:
    """Take the job's lease: it must be queued, or running under a lease that has expired.

    One conditional UPDATE, so of two workers handed the same job (a redelivered message,
    a re-dispatch by the reaper) exactly one wins; the loser leaves the job alone.
    """
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.state == JobState.QUEUED,
                (Job.state == JobState.RUNNING)
                & or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
            ),
        )
        .values(
            state=JobState.RUNNING,
            attempts=Job.attempts + 1,
            error=None,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(Job.started_at, now),
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(res, "rowcount", 0))


def renew(session: Session, job_id: str, owner: str, lease_s: float) -> str | None:
    """Extend the lease held by ``owner``; returns the job's state (``None`` if it is gone)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    return None if state is None else str(state)


def release(session: Session, job_id: str, owner: str) -> None:
    """Give a running job back to the queue (its run stopped on a transient error)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
        .values(state=JobState.QUEUED, lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def expired_leases(session: Session, now: datetime) -> list[str]:
    """Running jobs whose worker stopped renewing its lease."""
    return list(
        session.scalars(
            select(Job.id).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
        )
    )


def requeue_expired(session: Session, job_id: str, now: datetime) -> bool:
    """Move a running job with an expired lease back to ``queued`` (one reaper wins)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_expires_at < now)
        .values(state=JobState.QUEUED, lease_owner=None, lease_expires_at=None, dispatched_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(res, "rowcount", 0))


def lost_messages(session: Session, older_than: datetime) -> list[str]:
    """Queued jobs handed to the broker long ago (or never): their message was lost."""
    return list(
        session.scalars(
            select(Job.id).where(
                Job.state == JobState.QUEUED,
                or_(Job.dispatched_at.is_(None), Job.dispatched_at < older_than),
                Job.created_at < older_than,
            )
        )
    )


def mark_dispatched(session: Session, job_id: str, now: datetime) -> bool:
    """Stamp a queued job as handed to the broker now (one reaper wins)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED)
        .values(dispatched_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(res, "rowcount", 0))


def cancel_jobs(session: Session, collection_id: int) -> list[str]:
    """Cancel the unfinished jobs of a collection; returns their ids."""
    ids = list(
        session.scalars(
            select(Job.id).where(
                Job.collection_id == collection_id, Job.state.not_in(list(FINISHED_STATES))
            )
        )
    )
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.state.not_in(list(FINISHED_STATES)))
            .values(
                state=JobState.CANCELLED,
                error="cancelled: the collection was deleted",
                finished_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
    return ids


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
    job.lease_owner = None
    job.lease_expires_at = None
    if job.started_at is not None:
        started = job.started_at
        if started.tzinfo is None:  # SQLite returns naive datetimes
            started = started.replace(tzinfo=job.finished_at.tzinfo)
        job.duration_s = (job.finished_at - started).total_seconds()
