"""ORM models. The schema changes only through Alembic revisions in ``migrations/``."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets a real BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DocState(enum.StrEnum):
    PENDING = "pending"
    INDEXED = "indexed"
    DELETED = "deleted"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in one of these states will not change again.
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobKind(enum.StrEnum):
    INGEST = "ingest"
    COMPACT = "compact"


class Collection(Base):
    """A named set of documents embedded by one model into one vector space."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    embedder: Mapped[str] = mapped_column(String(512))
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16), default="cosine")
    index_spec: Mapped[str] = mapped_column(String(256), default="Flat")
    # Keep a BM25 index in every segment next to the vectors (lexical and hybrid search).
    lexical: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Bumped in the same transaction that changes the set of live segments; readers
    # compare it with what they have loaded to know when to refresh.
    manifest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Document(Base):
    """One stored document. ``id`` doubles as the FAISS vector id.

    Re-ingesting an external id with changed text marks the old row ``deleted`` (its vector
    becomes a tombstone) and inserts a new row, so a vector id is never reused.
    """

    __tablename__ = "documents"
    __table_args__ = (
        # One live row per external id; deleted rows (tombstones) may repeat it.
        Index(
            "uq_documents_live_external_id",
            "collection_id",
            "external_id",
            unique=True,
            postgresql_where=text("state <> 'deleted'"),
            sqlite_where=text("state <> 'deleted'"),
        ),
        Index("ix_documents_collection_state", "collection_id", "state"),
        Index("ix_documents_job", "job_id"),
        Index("ix_documents_segment", "segment_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(512))
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DocState.PENDING)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("segments.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Segment(Base):
    """An immutable FAISS index file set; ``active`` rows form the collection's manifest."""

    __tablename__ = "segments"
    __table_args__ = (Index("ix_segments_collection_active", "collection_id", "active"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    index_spec: Mapped[str] = mapped_column(String(256))
    n_vectors: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by_job: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # {file name: "sha256:<hex>"} for every file of the segment, verified when it is loaded.
    checksums: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    """A unit of background work with its progress, as shown by ``GET /v1/jobs/{id}``."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_collection", "collection_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    # SET NULL, not CASCADE: the row outlives its collection (it reads ``cancelled``).
    collection_id: Mapped[int | None] = mapped_column(
        ForeignKey("collections.id", ondelete="SET NULL"), nullable=True
    )
    collection_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The lease of the worker running the job, renewed by its heartbeat; a reaper
    # re-dispatches a running job whose lease expired (its worker died).
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # When the job was last handed to the broker (or the inline executor); a job still
    # ``queued`` long after this has lost its message and is sent again.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKey(Base):
    """A bearer key. Only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(256), default="read,write")
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # None: every collection; otherwise the collection names this key may read or write.
    collections: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
