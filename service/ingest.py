"""Ingest: store documents and queue the job that indexes them; batch indexing with progress.

:func:`ingest` is the one way a document enters Quarry (``POST .../documents``, ``quarry
index``, ``quarry eval``, the demo corpus): the job row and the documents are committed in
one transaction, the job is stamped as dispatched and handed to the dispatcher; a broker
that refuses it marks the job failed, and an API process that dies in between leaves it for
the reaper (``jobs.dispatched_at``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from tqdm import tqdm

from core.collections import get_collection
from core.db import session_scope
from core.documents import DocumentIn, upsert_documents
from core.errors import QuarryError
from core.jobs import create_job, finish
from core.models import FINISHED_STATES, Job, JobKind, JobState, utcnow
from service.jobs import submit

if TYPE_CHECKING:
    from service.container import Container

logger = logging.getLogger(__name__)


@dataclass
class IngestOutcome:
    """What one ingest call stored and the job that indexes it."""

    job: Job
    collection: str
    created: int
    updated: int
    unchanged: int

    @property
    def queued(self) -> bool:
        return self.job.state == JobState.QUEUED


def ingest(c: Container, collection: str, docs: Sequence[DocumentIn]) -> IngestOutcome:
    """Store ``docs`` (idempotent on id + content) and queue a job for the pending ones."""
    with session_scope(c.sessions) as s:
        coll = get_collection(s, collection)
        job = create_job(s, JobKind.INGEST, collection_id=coll.id, collection_name=coll.name)
        res = upsert_documents(s, coll, docs, job_id=job.id)
        job.total, job.skipped = len(res.pending_ids), res.unchanged
        if res.pending_ids:
            job.dispatched_at = utcnow()
        else:
            finish(s, job)
    if res.pending_ids:
        submit(c, JobKind.INGEST, job.id)
    return IngestOutcome(job, coll.name, res.created, res.updated, res.unchanged)


@dataclass
class IndexReport:
    documents: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    indexed: int = 0
    failed_jobs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def index_documents(
    c: Container,
    collection: str,
    docs: Iterable[DocumentIn],
    *,
    batch_size: int = 1000,
    wait: bool = True,
    show_progress: bool = True,
    poll_s: float = 0.5,
) -> IndexReport:
    """Ingest ``docs`` in batches (one job each) and, if ``wait``, follow the jobs to the end."""
    report = IndexReport()
    t0 = time.perf_counter()
    job_ids: list[str] = []
    it = iter(docs)
    while batch := list(itertools.islice(it, batch_size)):
        outcome = ingest(c, collection, batch)
        report.documents += len(batch)
        report.created += outcome.created
        report.updated += outcome.updated
        report.unchanged += outcome.unchanged
        if outcome.queued:
            job_ids.append(outcome.job.id)
    if wait and job_ids:
        report.indexed, report.failed_jobs = follow_jobs(c, job_ids, show_progress, poll_s)
    report.seconds = time.perf_counter() - t0
    return report


def follow_jobs(
    c: Container, job_ids: list[str], show_progress: bool = True, poll_s: float = 0.5
) -> tuple[int, list[str]]:
    """Poll jobs with a progress bar until all finish; returns (documents done, failed ids)."""
    bar = tqdm(total=0, unit="doc", desc="indexing", disable=not show_progress)
    try:
        while True:
            with session_scope(c.sessions) as s:
                rows = s.execute(
                    select(Job.id, Job.state, Job.total, Job.done, Job.error).where(
                        Job.id.in_(job_ids)
                    )
                ).all()
            bar.total = sum(r.total for r in rows)
            bar.n = done = sum(r.done for r in rows)
            bar.refresh()
            if len(rows) < len(job_ids):
                raise QuarryError("Some jobs vanished while being followed")
            if all(r.state in FINISHED_STATES for r in rows):
                failed = [r.id for r in rows if r.state != JobState.SUCCEEDED]
                for r in rows:
                    if r.state != JobState.SUCCEEDED:
                        logger.error("Job %s %s: %s", r.id, r.state, r.error)
                return done, failed
            time.sleep(poll_s)
    finally:
        bar.close()


def wait_for_job(c: Container, job_id: str, *, timeout_s: float = 3600.0) -> Job:
    """Poll a job until it finishes; raises on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(c.sessions) as s:
            job = s.get(Job, job_id)
            if job is None:
                raise QuarryError(f"Job {job_id} vanished")
            if job.state in FINISHED_STATES:
                return job
        time.sleep(0.5)
    raise QuarryError(f"Job {job_id} did not finish within {timeout_s:.0f}s")
