"""``quarry verify``: check every live segment against the manifest's checksums, and repair.

A segment whose files are damaged cannot be trusted for any of its vectors, but the
documents' text is in the database: ``--repair`` retires the segment and queues its live
documents for embedding again, so the collection heals through the ordinary ingest path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from core.collections import get_collection, list_collections
from core.db import session_scope
from core.jobs import create_job
from core.models import Collection, DocState, Document, JobKind, Segment, utcnow
from indexer import collection_dir, lock_collection, verify_segment
from service.jobs import submit

if TYPE_CHECKING:
    from service.container import Container

logger = logging.getLogger(__name__)


@dataclass
class SegmentProblem:
    collection: str
    segment: str
    problems: list[str]
    repair_job: str | None = None


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[SegmentProblem] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"{p.collection}/{p.segment}: CORRUPT: {'; '.join(p.problems)}"
            + (f" -> re-embedding in job {p.repair_job}" if p.repair_job else "")
            for p in self.corrupt
        ]
        out.append(f"{self.checked} segment(s) checked, {len(self.corrupt)} corrupt")
        return out


def verify(c: Container, collection: str | None = None, *, repair: bool = False) -> VerifyReport:
    """Verify the live segments of one collection (or all); optionally repair them."""
    report = VerifyReport()
    with session_scope(c.sessions) as s:
        colls = [get_collection(s, collection)] if collection else list_collections(s)
        work = [
            (coll.id, coll.name, seg.id, seg.name, seg.checksums)
            for coll in colls
            for seg in s.scalars(
                select(Segment).where(Segment.collection_id == coll.id, Segment.active.is_(True))
            )
        ]
    for cid, cname, seg_id, seg_name, checksums in work:
        report.checked += 1
        problems = verify_segment(collection_dir(c.segments_root, cid) / seg_name, checksums)
        if not problems:
            continue
        logger.error("Collection %s, segment %s is corrupt: %s", cname, seg_name, problems)
        found = SegmentProblem(cname, seg_name, problems)
        if repair:
            found.repair_job = _reembed(c, cid, seg_id)
        report.corrupt.append(found)
    if repair and report.corrupt:
        for cid in {cid for cid, *_ in work}:
            c.segments.invalidate(cid)
    return report


def _reembed(c: Container, collection_id: int, segment_id: int) -> str | None:
    """Retire a corrupt segment and queue its live documents again; returns the job id."""
    with session_scope(c.sessions) as s:
        coll: Collection = lock_collection(s, collection_id)
        seg = s.get(Segment, segment_id)
        if seg is None or not seg.active:
            return None  # a compaction replaced it meanwhile
        job = create_job(s, JobKind.INGEST, collection_id=coll.id, collection_name=coll.name)
        live = list(
            s.scalars(
                select(Document.id).where(
                    Document.segment_id == segment_id, Document.state != DocState.DELETED
                )
            )
        )
        s.execute(
            update(Document)
            .where(Document.segment_id == segment_id, Document.state != DocState.DELETED)
            .values(state=DocState.PENDING, segment_id=None, job_id=job.id)
        )
        # Tombstones pointed at vectors that are gone with the segment.
        s.execute(update(Document).where(Document.segment_id == segment_id).values(segment_id=None))
        seg.active = False
        seg.retired_at = utcnow()
        coll.manifest_version += 1
        job.total = len(live)
        job.dispatched_at = utcnow()
        job_id = job.id
    submit(c, JobKind.INGEST, job_id)
    logger.warning(
        "Segment %d retired; %d documents queued in job %s", segment_id, len(live), job_id
    )
    return job_id
