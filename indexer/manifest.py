"""The database side of segments: the manifest (active segment rows) and tombstones.

Every change to the set of active segments happens in one transaction that the caller
commits: that commit is the commit point of a segment. Take :func:`lock_collection` first
in the same transaction so concurrent ingests and compactions of a collection serialise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import CollectionNotFound, Conflict, InvalidRequest, QuarryError
from core.models import Collection, DocState, Document, Segment, utcnow
from indexer.integrity import checksums_format_problems

logger = logging.getLogger(__name__)

# Stay far below SQLite's bound-parameter limit in IN (...) lists.
_CHUNK = 500


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _as_id_list(doc_ids: Sequence[int] | np.ndarray, n_vectors: int, what: str) -> list[int]:
    ids = [int(i) for i in doc_ids]  # plain ints: DB drivers do not adapt numpy scalars
    if len(ids) != n_vectors:
        raise InvalidRequest(f"{what} has {len(ids)} ids but the segment has {n_vectors} vectors")
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"{what} contains duplicate ids")
    return ids


def lock_collection(session: Session, collection_id: int) -> Collection:
    """Load the collection with a row lock (``FOR UPDATE``) held until the transaction ends.

    On SQLite the engine begins transactions with ``BEGIN IMMEDIATE``, which already
    serialises writers. Raises :class:`CollectionNotFound`.
    """
    stmt = (
        select(Collection)
        .where(Collection.id == collection_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    collection = session.execute(stmt).scalar_one_or_none()
    if collection is None:
        raise CollectionNotFound(f"Collection {collection_id} does not exist")
    return collection


def active_segments(session: Session, collection_id: int) -> list[Segment]:
    """The collection's manifest: its active segments, oldest first."""
    stmt = (
        select(Segment)
        .where(Segment.collection_id == collection_id, Segment.active.is_(True))
        .order_by(Segment.id)
    )
    return list(session.scalars(stmt))


def tombstone_ids(session: Session, collection_id: int) -> np.ndarray:
    """Sorted int64 ids of deleted documents whose vectors are still in some segment."""
    stmt = (
        select(Document.id)
        .where(
            Document.collection_id == collection_id,
            Document.state == DocState.DELETED.value,
            Document.segment_id.is_not(None),
        )
        .order_by(Document.id)
    )
    return np.fromiter(session.scalars(stmt), dtype=np.int64)


def _new_segment(
    session: Session,
    collection: Collection,
    *,
    name: str,
    spec: str,
    n_vectors: int,
    job_id: str | None,
    checksums: Mapping[str, str] | None,
) -> Segment:
    if checksums is not None:
        problems = checksums_format_problems(checksums)
        if problems:
            raise InvalidRequest(f"Invalid checksums for segment {name!r}: {problems[0]}")
    segment = Segment(
        collection_id=collection.id,
        name=name,
        index_spec=spec,
        n_vectors=n_vectors,
        active=True,
        created_by_job=job_id,
        checksums=None if checksums is None else dict(checksums),
    )
    session.add(segment)
    session.flush()  # assigns segment.id
    return segment


def commit_segment(
    session: Session,
    collection: Collection,
    *,
    name: str,
    spec: str,
    n_vectors: int,
    doc_ids: Sequence[int] | np.ndarray,
    job_id: str | None,
    checksums: Mapping[str, str] | None = None,
) -> Segment:
    """Add a freshly written segment holding the vectors of ``doc_ids`` to the manifest.

    ``checksums`` (from :func:`~indexer.segment.segment_checksums`) are stored on the row;
    readers verify the files against them. ``None`` stores none (verification is skipped).

    Pending documents become ``indexed`` in the new segment. Documents deleted while they
    were being embedded stay ``deleted`` but point at the segment, so they are tombstones.
    Raises :class:`Conflict` if a document is already in a segment (a double commit) and
    :class:`InvalidRequest` if one is not in the collection. The caller commits.
    """
    ids = _as_id_list(doc_ids, n_vectors, "doc_ids")
    found: dict[int, int | None] = {}
    for chunk in _chunks(ids):
        rows = session.execute(
            select(Document.id, Document.segment_id).where(
                Document.collection_id == collection.id, Document.id.in_(chunk)
            )
        )
        found.update({row.id: row.segment_id for row in rows})
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidRequest(
            f"{len(missing)} documents are not in collection {collection.id} (first: {missing[:5]})"
        )
    taken = [i for i in ids if found[i] is not None]
    if taken:
        raise Conflict(
            f"{len(taken)} documents are already in a segment (first: {taken[:5]}); "
            "was this segment committed twice?"
        )

    segment = _new_segment(
        session,
        collection,
        name=name,
        spec=spec,
        n_vectors=n_vectors,
        job_id=job_id,
        checksums=checksums,
    )
    deleted = DocState.DELETED.value
    for chunk in _chunks(ids):
        session.execute(
            update(Document)
            .where(Document.id.in_(chunk), Document.state != deleted)
            .values(state=DocState.INDEXED.value, segment_id=segment.id)
        )
        session.execute(
            update(Document)
            .where(Document.id.in_(chunk), Document.state == deleted)
            .values(segment_id=segment.id)
        )
    collection.manifest_version += 1
    session.flush()
    logger.info(
        "Committed segment %s (%d vectors) to collection %d, manifest version %d",
        name,
        n_vectors,
        collection.id,
        collection.manifest_version,
    )
    return segment


def _retire(
    session: Session, collection: Collection, retired: Sequence[Segment], kept: list[int]
) -> list[int]:
    """Check ``retired`` and the docs in them; mark them retired. Returns their ids."""
    if not retired:
        raise InvalidRequest("No segments to retire")
    seg_ids = sorted({s.id for s in retired})
    current = session.scalars(
        select(Segment).where(Segment.id.in_(seg_ids)).execution_options(populate_existing=True)
    ).all()
    if len(current) != len(seg_ids):
        raise InvalidRequest(f"Some of the segments {seg_ids} do not exist")
    for seg in current:
        if seg.collection_id != collection.id:
            raise InvalidRequest(f"Segment {seg.name} is not in collection {collection.id}")
        if not seg.active:
            raise Conflict(f"Segment {seg.name} is already retired (a concurrent compaction?)")

    rows = session.execute(
        select(Document.id, Document.state).where(Document.segment_id.in_(seg_ids))
    )
    states = {row.id: row.state for row in rows}
    stray = [i for i in kept if i not in states]
    if stray:
        raise InvalidRequest(
            f"{len(stray)} kept ids are not in the retired segments (first: {stray[:5]})"
        )
    kept_set = set(kept)
    lost = [i for i, s in states.items() if i not in kept_set and s != DocState.DELETED.value]
    if lost:
        # A manifest invariant, not a damaged file: the compaction that asked is wrong.
        raise QuarryError(
            f"Compaction would drop {len(lost)} live documents (first: {sorted(lost)[:5]}); "
            "only deleted documents may be left out",
            details={"collection_id": collection.id},
        )
    now = utcnow()
    for seg in current:
        seg.active = False
        seg.retired_at = now
    return seg_ids


def replace_segments(
    session: Session,
    collection: Collection,
    *,
    retired: Sequence[Segment],
    name: str,
    spec: str,
    n_vectors: int,
    kept_doc_ids: Sequence[int] | np.ndarray,
    job_id: str | None,
    checksums: Mapping[str, str] | None = None,
) -> Segment:
    """Swap ``retired`` segments for one compacted segment holding ``kept_doc_ids``.

    Kept documents move to the new segment (those deleted meanwhile stay tombstones there).
    Deleted documents left out of it lose their segment: their tombstones are purged.
    ``checksums`` are stored on the new row (see :func:`commit_segment`). Raises
    :class:`Conflict` if a segment was already retired, :class:`QuarryError` (a server
    fault) if a live document of the retired segments is missing from ``kept_doc_ids``.
    The caller commits.
    """
    kept = _as_id_list(kept_doc_ids, n_vectors, "kept_doc_ids")
    seg_ids = _retire(session, collection, retired, kept)
    segment = _new_segment(
        session,
        collection,
        name=name,
        spec=spec,
        n_vectors=n_vectors,
        job_id=job_id,
        checksums=checksums,
    )
    for chunk in _chunks(kept):
        session.execute(
            update(Document).where(Document.id.in_(chunk)).values(segment_id=segment.id)
        )
    _purge_tombstones(session, seg_ids)
    collection.manifest_version += 1
    session.flush()
    logger.info(
        "Replaced %d segments of collection %d by %s (%d vectors), manifest version %d",
        len(seg_ids),
        collection.id,
        name,
        n_vectors,
        collection.manifest_version,
    )
    return segment


def retire_segments(
    session: Session, collection: Collection, *, retired: Sequence[Segment]
) -> None:
    """Retire segments whose documents are all deleted, with no replacement segment.

    For a compaction that leaves nothing to keep. Raises :class:`QuarryError` (a server
    fault) if a retired segment still holds a live document. The caller commits.
    """
    seg_ids = _retire(session, collection, retired, [])
    _purge_tombstones(session, seg_ids)
    collection.manifest_version += 1
    session.flush()
    logger.info("Retired %d empty segments of collection %d", len(seg_ids), collection.id)


def _purge_tombstones(session: Session, seg_ids: list[int]) -> None:
    # Whatever still points into the retired segments is a deleted doc left out of the
    # new one: its vector is gone, so it no longer needs a tombstone.
    session.execute(
        update(Document).where(Document.segment_id.in_(seg_ids)).values(segment_id=None)
    )
