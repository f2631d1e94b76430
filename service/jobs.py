"""The work behind each job kind, its lease, and the reaper that recovers lost jobs.

Both jobs are idempotent. Ingest embeds the documents still *pending* for the job and
commits each chunk as a new segment inside one database transaction that also marks the
documents indexed; the commit re-checks, under the collection lock, which documents are
still pending, so a retried or duplicated task never adds a vector twice. Compaction
rebuilds the live vectors of a collection into one trained index and swaps it in the same
way.

A worker runs a job under a **lease** (``jobs.lease_owner``/``lease_expires_at``) that a
heartbeat thread renews; the heartbeat also notices a cancellation (the collection was
deleted) and the job stops at its next chunk. :func:`reap` re-dispatches jobs whose lease
expired (their worker died) and jobs still queued long after their message was sent (it
was lost), so no job hangs; every run is counted in ``jobs.attempts``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from core.db import session_scope
from core.documents import pending_documents
from core.errors import BrokerUnavailable, CollectionNotFound, QuarryError
from core.jobs import (
    claim,
    committed_count,
    expired_leases,
    finish,
    get_job,
    lost_messages,
    mark_dispatched,
    release,
    renew,
    requeue_expired,
    set_progress,
)
from core.models import (
    FINISHED_STATES,
    Collection,
    DocState,
    Document,
    Job,
    JobKind,
    JobState,
    Segment,
    utcnow,
)
from core.priority import bulk_work
from indexer import (
    FRESH_SEGMENT_SPEC,
    active_segments,
    build_lexical,
    collection_dir,
    commit_segment,
    compact_lexical,
    compact_vectors,
    compaction_spec,
    delete_segment_files,
    lock_collection,
    new_segment_name,
    replace_segments,
    retire_segments,
    segment_checksums,
    tombstone_ids,
    write_segment,
)

if TYPE_CHECKING:
    from service.container import Container

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was cancelled (its collection deleted) while it ran."""


def worker_id() -> str:
    """Who holds a lease: host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Lease:
    """The lease on a running job, renewed by a heartbeat thread until :meth:`stop`."""

    def __init__(self, c: Container, job_id: str, owner: str) -> None:
        self._c, self.job_id, self.owner = c, job_id, owner
        self._lease_s = c.settings.jobs.lease_s
        self._stop = threading.Event()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"quarry-lease-{job_id[:8]}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                with session_scope(self._c.sessions) as s:
                    state = renew(s, self.job_id, self.owner, self._lease_s)
            except Exception as exc:  # the next beat tries again; the lease is 3 beats long
                logger.warning("Job %s: lease renewal failed: %s", self.job_id, exc)
                continue
            if state is None or state == JobState.CANCELLED:
                self.cancelled.set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled meanwhile."""
        if self.cancelled.is_set():
            raise JobCancelled(self.job_id)
        with session_scope(self._c.sessions) as s:
            state = s.scalar(select(Job.state).where(Job.id == self.job_id))
        if state is None or state == JobState.CANCELLED:
            self.cancelled.set()
            raise JobCancelled(self.job_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def _leased(c: Container, job_id: str) -> Iterator[tuple[Lease, Collection] | None]:
    """Claim the job and hold its lease; ``None`` when there is nothing for us to do."""
    owner = worker_id()
    with session_scope(c.sessions) as s:
        job = get_job(s, job_id)
        if job.state in FINISHED_STATES:
            logger.info("Job %s is %s; nothing to do", job_id, job.state)
            yield None
            return
        if job.collection_id is None:
            raise QuarryError(f"Job {job_id} has no collection")
        coll = s.get(Collection, job.collection_id)
        if coll is None:
            raise CollectionNotFound(f"The collection of job {job_id} was deleted")
        if job.attempts >= c.settings.jobs.max_attempts:
            raise QuarryError(f"gave up after {job.attempts} attempts (see worker logs)")
        if not claim(s, job_id, owner, c.settings.jobs.lease_s):
            logger.info("Job %s is running under another worker's lease; skipping", job_id)
            yield None
            return
        s.expunge(coll)
    lease = Lease(c, job_id, owner)
    try:
        yield lease, coll
    except JobCancelled:
        logger.info("Job %s was cancelled; stopped", job_id)
    except BaseException:
        # Give the job back at once (a retry or the reaper runs it again) unless it was
        # recorded as failed by the caller.
        with session_scope(c.sessions) as s:
            release(s, job_id, owner)
        raise
    finally:
        lease.stop()


class _JobProgress:
    """Writes ``jobs.done`` while a chunk is being embedded, at most once per interval."""

    def __init__(self, c: Container, job_id: str, base: int, interval_s: float = 1.0) -> None:
        self._c, self._job_id, self._interval = c, job_id, interval_s
        self.base = base  # documents of this job already committed
        self._in_chunk = 0
        self._last = 0.0

    def new_chunk(self, committed: int) -> None:
        self.base += committed
        self._in_chunk = 0

    def __call__(self, n: int) -> None:
        self._in_chunk += n
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            with session_scope(self._c.sessions) as s:
                set_progress(s, self._job_id, self.base + self._in_chunk)


def run_ingest(c: Container, job_id: str) -> int:
    """Embed and index the job's pending documents; returns how many were indexed now."""
    with _leased(c, job_id) as held:
        if held is None:
            return 0
        lease, coll = held
        return _ingest(c, job_id, lease, coll)
    return 0  # cancelled


def _ingest(c: Container, job_id: str, lease: Lease, coll: Collection) -> int:
    embedder = c.embedders.get(coll.embedder)
    if embedder.dim != coll.dim:
        raise QuarryError(
            f"Model {coll.embedder!r} gives {embedder.dim}-dim vectors but collection "
            f"{coll.name!r} holds {coll.dim}-dim vectors"
        )
    chunk = c.settings.index.segment_max_docs
    with session_scope(c.sessions) as s:
        progress = _JobProgress(c, job_id, base=committed_count(s, job_id))
    indexed = 0
    while True:
        lease.check()
        with session_scope(c.sessions) as s:
            batch = [(d.id, d.text) for d in pending_documents(s, job_id, limit=chunk)]
        if not batch:
            break
        ids = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
        t0 = time.perf_counter()
        with bulk_work():  # queries sharing the model go first (core.priority)
            vectors = embedder.embed(
                [t for _, t in batch], kind="document", normalize=False, progress=progress
            )
        logger.info(
            "Job %s: embedded %d docs in %.2fs", job_id, len(batch), time.perf_counter() - t0
        )
        lease.check()
        # Zero when a concurrent copy of the job took every document of this chunk (or
        # they were deleted meanwhile); whatever is left is re-read on the next turn.
        n = _commit_chunk(c, coll, job_id, ids, vectors, [t for _, t in batch])
        progress.new_chunk(n)
        indexed += n
    with session_scope(c.sessions) as s:
        job = get_job(s, job_id)
        if job.state == JobState.CANCELLED:
            raise JobCancelled(job_id)
        job.done = committed_count(s, job_id)
        finish(s, job)
    return indexed


def _commit_chunk(
    c: Container,
    coll: Collection,
    job_id: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    texts: list[str],
) -> int:
    """Write one segment for the still-pending ``ids`` and commit it; returns its size."""
    # Tokenising is the slow part of the lexical index: do it before taking the lock.
    lexical = build_lexical(texts, ids) if coll.lexical else None
    path = None
    try:
        with session_scope(c.sessions) as s:
            try:
                locked = lock_collection(s, coll.id)
            except CollectionNotFound as exc:
                raise JobCancelled(job_id) from exc
            still = set(
                s.scalars(
                    select(Document.id).where(
                        Document.job_id == job_id,
                        Document.state == DocState.PENDING,
                        Document.id.between(int(ids.min()), int(ids.max())),
                    )
                )
            )
            keep = np.fromiter((int(i) in still for i in ids), dtype=bool, count=len(ids))
            if not keep.any():
                return 0
            if lexical is not None and not keep.all():
                lexical = build_lexical(
                    [t for t, k in zip(texts, keep, strict=True) if k], ids[keep]
                )
            name = new_segment_name()
            path = write_segment(
                c.segments_root,
                coll.id,
                name,
                spec=FRESH_SEGMENT_SPEC,
                metric=locked.metric,  # type: ignore[arg-type]
                vectors=vectors[keep],
                ids=ids[keep],
                lexical=lexical,
            )
            kept = ids[keep].tolist()
            commit_segment(
                s,
                locked,
                name=name,
                spec=FRESH_SEGMENT_SPEC,
                n_vectors=len(kept),
                doc_ids=kept,
                job_id=job_id,
                checksums=segment_checksums(path),
            )
        return len(kept)
    except BaseException:
        if path is not None:
            delete_segment_files(path)
        raise


def run_compact(c: Container, job_id: str) -> int:
    """Merge all live segments of the job's collection into one index of its spec."""
    with _leased(c, job_id) as held:
        if held is None:
            return 0
        lease, coll = held
        return _compact(c, job_id, lease, coll)
    return 0  # cancelled


def _compact(c: Container, job_id: str, lease: Lease, coll: Collection) -> int:
    with session_scope(c.sessions) as s:
        job = get_job(s, job_id)
        spec = str(job.params.get("index_spec") or coll.index_spec)
        segments = active_segments(s, coll.id)
        drop = tombstone_ids(s, coll.id)
        s.expunge_all()
    already_compact = len(segments) == 1 and segments[0].index_spec == spec and len(drop) == 0
    if not segments or already_compact:
        with session_scope(c.sessions) as s:
            finish(s, get_job(s, job_id))
        return 0
    paths = [collection_dir(c.segments_root, coll.id) / seg.name for seg in segments]
    sums = [seg.checksums for seg in segments]
    ids, vectors = compact_vectors(paths, drop, checksums=sums)
    lease.check()
    if len(ids) == 0:  # everything was deleted: retire the segments, write nothing
        with session_scope(c.sessions) as s:
            locked = lock_collection(s, coll.id)
            retire_segments(s, locked, retired=segments)
            finish(s, get_job(s, job_id))
        return 0
    spec = compaction_spec(spec, len(ids), coll.dim, collection=coll.name)
    lexical = compact_lexical(paths, drop, checksums=sums) if coll.lexical else None
    name = new_segment_name()
    path = write_segment(
        c.segments_root,
        coll.id,
        name,
        spec=spec,
        metric=coll.metric,  # type: ignore[arg-type]
        vectors=vectors,
        ids=ids,
        lexical=lexical,
    )
    try:
        lease.check()
        with session_scope(c.sessions) as s:
            locked = lock_collection(s, coll.id)
            live = {seg.id for seg in active_segments(s, coll.id)}
            if any(seg.id not in live for seg in segments):
                raise QuarryError("The collection's segments changed during compaction; retry")
            replace_segments(
                s,
                locked,
                retired=[seg for seg in segments if seg.id in live],
                name=name,
                spec=spec,
                n_vectors=len(ids),
                kept_doc_ids=ids.tolist(),
                job_id=job_id,
                checksums=segment_checksums(path),
            )
            job_row = get_job(s, job_id)
            job_row.total = job_row.done = len(ids)
            job_row.params = {**job_row.params, "built_spec": spec}
            finish(s, job_row)
    except BaseException:
        delete_segment_files(path)
        raise
    return len(ids)


RUNNERS: dict[str, Callable[[Container, str], Any]] = {
    JobKind.INGEST: run_ingest,
    JobKind.COMPACT: run_compact,
}


def fail_job(c: Container, job_id: str, message: str) -> None:
    """Record a permanent failure (after the last retry or on a non-retryable error)."""
    with session_scope(c.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None and job.state not in FINISHED_STATES:
            finish(s, job, error=message)


def run_job(c: Container, kind: JobKind, job_id: str) -> None:
    """Run one job to its end in this thread, recording any failure (the embedded mode)."""
    try:
        RUNNERS[kind](c, job_id)
    except QuarryError as exc:
        fail_job(c, job_id, exc.message)
    except Exception as exc:
        logger.exception("Job %s crashed", job_id)
        fail_job(c, job_id, f"internal error ({type(exc).__name__}); see logs")


def submit(c: Container, kind: JobKind, job_id: str) -> None:
    """Hand a committed job to the dispatcher; a job the broker refused is marked failed."""
    try:
        c.dispatcher.submit(kind, job_id)
    except BrokerUnavailable as exc:
        fail_job(c, job_id, exc.message)
        raise


@dataclass
class ReapReport:
    expired: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)


def reap(c: Container, *, requeue_after_s: float | None = None) -> ReapReport:
    """Re-dispatch jobs that lost their worker (expired lease) or their message.

    Safe to run from several processes at once: each job is claimed for re-dispatch by one
    conditional UPDATE, and a job run twice is a no-op the second time.
    """
    cfg = c.settings.jobs
    report = ReapReport()
    now = utcnow()
    after = cfg.requeue_after_s if requeue_after_s is None else requeue_after_s
    with session_scope(c.sessions) as s:
        for job_id in expired_leases(s, now):
            if requeue_expired(s, job_id, now):
                report.expired.append(job_id)
        for job_id in lost_messages(s, now - timedelta(seconds=after)):
            if mark_dispatched(s, job_id, now):
                report.resent.append(job_id)
        kinds: dict[str, str] = {
            row.id: row.kind
            for row in s.execute(
                select(Job.id, Job.kind).where(Job.id.in_(report.expired + report.resent))
            )
        }
        for job_id in report.expired + report.resent:
            job = s.get(Job, job_id)
            if job is not None and job.attempts >= cfg.max_attempts:
                finish(s, job, error=f"gave up after {job.attempts} attempts (see worker logs)")
                report.given_up.append(job_id)
    for job_id in report.expired + report.resent:
        if job_id in report.given_up:
            continue
        logger.warning(
            "Re-dispatching %s job %s (%s)",
            kinds[job_id],
            job_id,
            "its worker's lease expired" if job_id in report.expired else "its message was lost",
        )
        try:
            c.dispatcher.submit(JobKind(kinds[job_id]), job_id)
        except BrokerUnavailable:
            logger.warning("Broker unavailable; job %s stays queued for the next round", job_id)
    return report


def collect_garbage(c: Container) -> int:
    """Remove temp, uncommitted and retired segment files past the grace period, and the
    folders of collections that no longer exist. Returns how many directories went."""
    from indexer import collect_garbage as remove_unreferenced
    from indexer import drop_collection, stray_collection_dirs

    grace = c.settings.jobs.cleanup_grace_s
    now = time.time()
    removed = 0
    with session_scope(c.sessions) as s:
        live_ids = set(s.scalars(select(Collection.id)))
        rows = s.execute(
            select(Segment.collection_id, Segment.name, Segment.active, Segment.retired_at)
        ).all()
    keep: dict[int, set[str]] = {cid: set() for cid in live_ids}
    for cid, name, active, retired_at in rows:
        if active or retired_at is None or now - retired_at.timestamp() < grace:
            keep.setdefault(cid, set()).add(name)
    for path in stray_collection_dirs(c.segments_root, live_ids, min_age_s=grace):
        logger.info("Removing the folder of a deleted collection: %s", path)
        drop_collection(c.segments_root, int(path.name))
        removed += 1
    for cid in live_ids:
        removed += len(remove_unreferenced(c.segments_root, cid, keep[cid], min_age_s=grace))
    return removed


class Housekeeper:
    """A daemon thread that reaps lost jobs and collects garbage at their intervals."""

    def __init__(self, c: Container, *, reap_jobs: bool = True) -> None:
        self._c = c
        self._reap_jobs = reap_jobs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="quarry-housekeeper", daemon=True)

    def start(self) -> Housekeeper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        cfg = self._c.settings.jobs
        next_cleanup = 0.0
        while not self._stop.wait(cfg.reap_interval_s):
            try:
                if self._reap_jobs:
                    reap(self._c)
                if time.monotonic() >= next_cleanup:
                    collect_garbage(self._c)
                    next_cleanup = time.monotonic() + cfg.cleanup_interval_s
            except Exception:
                logger.exception("Housekeeping round failed; trying again next round")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def show_job(c: Container, job_id: str) -> Job:
    """A job's state and progress (its row outlives its collection)."""
    with session_scope(c.sessions) as s:
        return get_job(s, job_id)
