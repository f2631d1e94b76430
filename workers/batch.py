"""Batch indexing from the command line: store documents, queue jobs, follow their progress."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from tqdm import tqdm

from core.collections import create_collection, get_collection
from core.db import session_scope
from core.documents import DocumentIn, upsert_documents
from core.errors import CollectionNotFound, QuarryError
from core.jobs import create_job, finish
from core.models import Job, JobKind, JobState
from workers.dispatch import Dispatcher
from workers.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass
class IndexReport:
    documents: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    indexed: int = 0
    failed_jobs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def ensure_collection(rt: Runtime, name: str, *, embedder: str | None, index_spec: str) -> None:
    with session_scope(rt.sessions) as s:
        try:
            get_collection(s, name)
            return
        except CollectionNotFound:
            pass
        model = embedder or rt.settings.embedder.default_model
        dim = rt.embedders.get(model).dim
        create_collection(s, name=name, embedder=model, dim=dim, index_spec=index_spec)
        logger.info("Created collection %s (model %s, dim %d)", name, model, dim)


def index_documents(
    rt: Runtime,
    dispatcher: Dispatcher,
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
        with session_scope(rt.sessions) as s:
            coll = get_collection(s, collection)
            job = create_job(s, JobKind.INGEST, collection_id=coll.id)
            res = upsert_documents(s, coll, batch, job_id=job.id)
            job.total, job.skipped = len(res.pending_ids), res.unchanged
            if not res.pending_ids:
                finish(s, job)
            job_id, queue_it = job.id, bool(res.pending_ids)
        report.documents += len(batch)
        report.created += res.created
        report.updated += res.updated
        report.unchanged += res.unchanged
        if queue_it:
            dispatcher.submit(JobKind.INGEST, job_id)
            job_ids.append(job_id)
    if wait and job_ids:
        report.indexed, report.failed_jobs = _follow(rt, job_ids, show_progress, poll_s)
    report.seconds = time.perf_counter() - t0
    return report


def _follow(
    rt: Runtime, job_ids: list[str], show_progress: bool, poll_s: float
) -> tuple[int, list[str]]:
    bar = tqdm(total=0, unit="doc", desc="indexing", disable=not show_progress)
    try:
        while True:
            with session_scope(rt.sessions) as s:
                rows = s.execute(
                    select(Job.id, Job.state, Job.total, Job.done, Job.error).where(
                        Job.id.in_(job_ids)
                    )
                ).all()
            total = sum(r.total for r in rows)
            done = sum(r.done for r in rows)
            bar.total = total
            bar.n = done
            bar.refresh()
            finished = [r for r in rows if r.state in (JobState.SUCCEEDED, JobState.FAILED)]
            if len(finished) == len(job_ids):
                failed = [r.id for r in rows if r.state == JobState.FAILED]
                for r in rows:
                    if r.state == JobState.FAILED:
                        logger.error("Job %s failed: %s", r.id, r.error)
                return done, failed
            time.sleep(poll_s)
    finally:
        bar.close()


def wait_for_job(rt: Runtime, job_id: str, *, timeout_s: float = 3600.0) -> Job:
    """Poll a job until it finishes; raises on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(rt.sessions) as s:
            job = s.get(Job, job_id)
            if job is None:
                raise QuarryError(f"Job {job_id} vanished")
            if job.state in (JobState.SUCCEEDED, JobState.FAILED):
                return job
        time.sleep(0.5)
    raise QuarryError(f"Job {job_id} did not finish within {timeout_s:.0f}s")
