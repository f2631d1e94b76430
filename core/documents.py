"""Document records: idempotent upsert, lookup, delete and metadata filtering.

Ingest is idempotent on ``(collection, external_id)`` plus a content hash: re-sending the
same document is a no-op, sending changed text replaces it (the old row becomes a tombstone
so its vector stops matching), and a pending document is simply re-assigned to the new job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from sqlalchemy import ColumnElement, Select, or_, select, update
from sqlalchemy.orm import Session

from core.errors import DocumentNotFound, InvalidRequest
from core.models import Collection, DocState, Document
from core.text import CleanStr, Metadata

_CHUNK = 500  # bound IN (...) lists; SQLite allows ~32k parameters, Postgres 65k


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DocumentIn:
    """A document to ingest (the API body, a JSONL line, a BEIR corpus line). Its id may
    contain "/" (``GET .../documents/a/b`` finds it)."""

    id: Annotated[CleanStr, Field(min_length=1, max_length=512, description="Your id for it")]
    text: Annotated[CleanStr, Field(min_length=1)]
    metadata: Metadata = field(default_factory=dict)


@dataclass
class UpsertResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    pending_ids: list[int] = field(default_factory=list)


def content_hash(text: str, metadata: dict[str, Any]) -> str:
    payload = json.dumps([text, metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _live_by_external_id(
    session: Session, collection_id: int, external_ids: Sequence[str]
) -> dict[str, Document]:
    found: dict[str, Document] = {}
    for chunk in _chunks(external_ids):
        rows = session.scalars(
            select(Document).where(
                Document.collection_id == collection_id,
                Document.external_id.in_(chunk),
                Document.state != DocState.DELETED,
            )
        )
        found.update({d.external_id: d for d in rows})
    return found


def upsert_documents(
    session: Session, collection: Collection, docs: Sequence[DocumentIn], *, job_id: str
) -> UpsertResult:
    """Store documents and assign every one that needs embedding to ``job_id``."""
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise InvalidRequest(f"Duplicate document id {doc.id!r} in one request")
        seen.add(doc.id)
    existing = _live_by_external_id(session, collection.id, [d.id for d in docs])
    result = UpsertResult()
    fresh: list[Document] = []
    for doc in docs:
        digest = content_hash(doc.text, doc.metadata)
        old = existing.get(doc.id)
        if old is not None and old.content_hash == digest:
            if old.state == DocState.PENDING:  # an earlier job never finished it
                old.job_id = job_id
                result.pending_ids.append(old.id)
            result.unchanged += 1
            continue
        if old is not None:
            old.state = DocState.DELETED
            result.updated += 1
        else:
            result.created += 1
        fresh.append(
            Document(
                collection_id=collection.id,
                external_id=doc.id,
                text=doc.text,
                meta=doc.metadata,
                content_hash=digest,
                state=DocState.PENDING,
                job_id=job_id,
            )
        )
    # Retire old rows before inserting replacements: the partial unique index allows one
    # live row per external id.
    session.flush()
    session.add_all(fresh)
    session.flush()
    result.pending_ids.extend(d.id for d in fresh)
    if result.updated:
        collection.manifest_version += 1
    return result


def get_document(session: Session, collection_id: int, external_id: str) -> Document:
    if "\x00" in external_id:  # never stored (refused at ingest); Postgres rejects it in SQL
        raise DocumentNotFound(f"Document {external_id!r} does not exist")
    doc = session.scalar(
        select(Document).where(
            Document.collection_id == collection_id,
            Document.external_id == external_id,
            Document.state != DocState.DELETED,
        )
    )
    if doc is None:
        raise DocumentNotFound(f"Document {external_id!r} does not exist")
    return doc


def delete_documents(session: Session, collection: Collection, external_ids: Sequence[str]) -> int:
    """Tombstone documents; returns how many live documents were deleted."""
    deleted = 0
    ids = [i for i in dict.fromkeys(external_ids) if "\x00" not in i]  # never stored
    for chunk in _chunks(ids):
        res = session.execute(
            update(Document)
            .where(
                Document.collection_id == collection.id,
                Document.external_id.in_(chunk),
                Document.state != DocState.DELETED,
            )
            .values(state=DocState.DELETED)
            .execution_options(synchronize_session=False)
        )
        deleted += int(getattr(res, "rowcount", 0) or 0)
    if deleted:
        collection.manifest_version += 1  # readers refresh their tombstones
    return deleted


def pending_documents(session: Session, job_id: str, *, limit: int | None = None) -> list[Document]:
    """Documents still waiting for ``job_id`` to embed them, in id order."""
    stmt = (
        select(Document)
        .where(Document.job_id == job_id, Document.state == DocState.PENDING)
        .order_by(Document.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


class DocumentRow(NamedTuple):
    """What a search hit shows of a document."""

    external_id: str
    text: str
    meta: dict[str, Any] | None


def documents_by_ids(session: Session, ids: Sequence[int]) -> dict[int, DocumentRow]:
    """Indexed documents by vector id (tombstones excluded), as plain rows: a search reads
    three columns of ten documents, and building ORM objects for them cost more than the
    query."""
    out: dict[int, DocumentRow] = {}
    for chunk in _chunks([int(i) for i in ids]):
        rows = session.execute(
            select(Document.id, Document.external_id, Document.text, Document.meta).where(
                Document.id.in_(chunk), Document.state == DocState.INDEXED
            )
        )
        out.update({r[0]: DocumentRow(r[1], r[2], r[3]) for r in rows})
    return out


def _equals(key: str, value: Any) -> ColumnElement[bool]:
    if not isinstance(key, str) or not key:
        raise InvalidRequest("Filter keys must be non-empty strings")
    field_ = Document.meta[key]
    if isinstance(value, bool):
        return field_.as_boolean() == value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:  # beyond a 64-bit integer: compare as a number
            return field_.as_float() == float(value)
        return field_.as_integer() == value
    if isinstance(value, float):
        return field_.as_float() == value
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(f"Filter on {key!r}: NUL characters are not allowed")
        return field_.as_string() == value
    raise InvalidRequest(
        f"Filter on {key!r}: only equality on strings, numbers and booleans is supported"
    )


def filter_statement(collection_id: int, filters: dict[str, Any]) -> Select[Any]:
    stmt = select(Document.id).where(
        Document.collection_id == collection_id, Document.state == DocState.INDEXED
    )
    for key, value in filters.items():
        if isinstance(value, list):
            if not value:
                raise InvalidRequest(f"Filter on {key!r}: the list of values is empty")
            stmt = stmt.where(or_(*(_equals(key, v) for v in value)))
        else:
            stmt = stmt.where(_equals(key, value))
    return stmt


def filtered_ids(session: Session, collection_id: int, filters: dict[str, Any]) -> np.ndarray:
    """Vector ids of indexed documents whose metadata equals every filter (a list = any of)."""
    ids = session.scalars(filter_statement(collection_id, filters)).all()
    return np.asarray(ids, dtype=np.int64)
