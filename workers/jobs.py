"""The work behind each job kind, independent of how it is scheduled (Celery or inline).

Both jobs are idempotent. Ingest embeds the documents still *pending* for the job and
commits each chunk as a new segment inside one database transaction that also marks the
documents indexed; the commit re-checks, under the collection lock, which documents are
still pending, so a retried or duplicated task never adds a vector twice. Compaction
rebuilds the live vectors of a collection into one trained index and swaps it in the same
way. A crash between writing a segment's files and committing leaves an orphan directory
that is never read and is removed by the next compaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import select

from core.db import session_scope
from core.documents import pending_documents
from core.errors import CollectionNotFound, QuarryError
from core.jobs import committed_count, finish, get_job, mark_running, set_progress
from core.models import Collection, DocState, Document, Job, JobKind, JobState, Segment
from indexer import (
    active_segments,
    build_lexical,
    commit_segment,
    compact_lexical,
    compact_vectors,
    delete_segment_files,
    lock_collection,
    min_training_vectors,
    new_segment_name,
    orphan_segment_dirs,
    replace_segments,
    retire_segments,
    tombstone_ids,
    write_segment,
)
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

INGEST_SEGMENT_SPEC = "Flat"  # fresh segments are small and exact; compaction trains


def _start(rt: Runtime, job_id: str) -> tuple[Job, Collection] | None:
    """Mark the job running; ``None`` when there is nothing to do (finished already)."""
    with session_scope(rt.sessions) as s:
        job = get_job(s, job_id)
        if job.state == JobState.SUCCEEDED:
            logger.info("Job %s already succeeded; nothing to do", job_id)
            return None
        if job.collection_id is None:
            raise QuarryError(f"Job {job_id} has no collection")
        coll = s.get(Collection, job.collection_id)
        if coll is None:
            raise CollectionNotFound(f"The collection of job {job_id} was deleted")
        mark_running(s, job)
        s.flush()
        s.expunge_all()
        return job, coll


class _JobProgress:
    """Writes ``jobs.done`` while a chunk is being embedded, at most once per interval."""

    def __init__(self, rt: Runtime, job_id: str, base: int, interval_s: float = 1.0) -> None:
        self._rt, self._job_id, self._interval = rt, job_id, interval_s
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
            with session_scope(self._rt.sessions) as s:
                set_progress(s, self._job_id, self.base + self._in_chunk)


def run_ingest(rt: Runtime, job_id: str) -> int:
    """Embed and index the job's pending documents; returns how many were indexed now."""
    started = _start(rt, job_id)
    if started is None:
        return 0
    _, coll = started
    embedder = rt.embedders.get(coll.embedder)
    if embedder.dim != coll.dim:
        raise QuarryError(
            f"Model {coll.embedder!r} gives {embedder.dim}-dim vectors but collection "
            f"{coll.name!r} holds {coll.dim}-dim vectors"
        )
    chunk = rt.settings.index.segment_max_docs
    with session_scope(rt.sessions) as s:
        progress = _JobProgress(rt, job_id, base=committed_count(s, job_id))
    indexed = 0
    while True:
        with session_scope(rt.sessions) as s:
            batch = [(d.id, d.text) for d in pending_documents(s, job_id, limit=chunk)]
        if not batch:
            break
        ids = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
        t0 = time.perf_counter()
        vectors = embedder.embed(
            [t for _, t in batch], kind="document", normalize=False, progress=progress
        )
        logger.info(
            "Job %s: embedded %d docs in %.2fs", job_id, len(batch), time.perf_counter() - t0
        )
        # Zero when a concurrent copy of the job took every document of this chunk (or
        # they were deleted meanwhile); whatever is left is re-read on the next turn.
        n = _commit_chunk(rt, coll, job_id, ids, vectors, [t for _, t in batch])
        progress.new_chunk(n)
        indexed += n
    with session_scope(rt.sessions) as s:
        job = get_job(s, job_id)
        job.done = committed_count(s, job_id)
        finish(s, job)
    return indexed


def _commit_chunk(
    rt: Runtime,
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
        with session_scope(rt.sessions) as s:
            locked = lock_collection(s, coll.id)
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
                rt.segments_root,
                coll.id,
                name,
                spec=INGEST_SEGMENT_SPEC,
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
                spec=INGEST_SEGMENT_SPEC,
                n_vectors=len(kept),
                doc_ids=kept,
                job_id=job_id,
            )
        return len(kept)
    except BaseException:
        if path is not None:
            delete_segment_files(path)
        raise


RETIRED_GRACE_S = 600  # readers may still hold a retired segment's old manifest this long


def _collect_garbage(rt: Runtime, collection_id: int) -> None:
    """Remove orphan directories and retired segments past their grace period."""
    now = time.time()
    with session_scope(rt.sessions) as s:
        rows = s.scalars(select(Segment).where(Segment.collection_id == collection_id)).all()
        keep = {
            seg.name
            for seg in rows
            if seg.active
            or seg.retired_at is None
            or now - seg.retired_at.timestamp() < RETIRED_GRACE_S
        }
    # The age limit spares a segment an ingest has written but not yet committed.
    orphans = orphan_segment_dirs(rt.segments_root, collection_id, keep, min_age_s=RETIRED_GRACE_S)
    for path in orphans:
        logger.info("Removing unreferenced segment directory %s", path)
        delete_segment_files(path)


def run_compact(rt: Runtime, job_id: str) -> int:
    """Merge all live segments of the job's collection into one index of its spec."""
    started = _start(rt, job_id)
    if started is None:
        return 0
    job, coll = started
    spec = str(job.params.get("index_spec") or coll.index_spec)
    _collect_garbage(rt, coll.id)
    with session_scope(rt.sessions) as s:
        segments = active_segments(s, coll.id)
        drop = tombstone_ids(s, coll.id)
        s.expunge_all()
    already_compact = len(segments) == 1 and segments[0].index_spec == spec and len(drop) == 0
    if not segments or already_compact:
        with session_scope(rt.sessions) as s:
            finish(s, get_job(s, job_id))
        return 0
    root = rt.segments_root / str(coll.id)
    ids, vectors = compact_vectors([root / seg.name for seg in segments], drop)
    if len(ids) == 0:  # everything was deleted: retire the segments, write nothing
        with session_scope(rt.sessions) as s:
            locked = lock_collection(s, coll.id)
            retire_segments(s, locked, retired=segments)
            finish(s, get_job(s, job_id))
        return 0
    need = min_training_vectors(spec, coll.dim)
    if len(ids) < need:
        logger.warning(
            "Collection %s: %d vectors are too few to train %r (needs %d); building Flat",
            coll.name,
            len(ids),
            spec,
            need,
        )
        spec = "Flat"
    paths = [root / seg.name for seg in segments]
    lexical = compact_lexical(paths, drop) if coll.lexical else None
    name = new_segment_name()
    path = write_segment(
        rt.segments_root,
        coll.id,
        name,
        spec=spec,
        metric=coll.metric,  # type: ignore[arg-type]
        vectors=vectors,
        ids=ids,
        lexical=lexical,
    )
    try:
        with session_scope(rt.sessions) as s:
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
            )
            job_row = get_job(s, job_id)
            job_row.total = job_row.done = len(ids)
            job_row.params = {**job_row.params, "built_spec": spec}
            finish(s, job_row)
    except BaseException:
        delete_segment_files(path)
        raise
    return len(ids)


RUNNERS: dict[str, Callable[[Runtime, str], Any]] = {
    JobKind.INGEST: run_ingest,
    JobKind.COMPACT: run_compact,
}


def fail_job(rt: Runtime, job_id: str, message: str) -> None:
    """Record a permanent failure (after the last retry or on a non-retryable error)."""
    with session_scope(rt.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None and job.state != JobState.SUCCEEDED:
            finish(s, job, error=message)
