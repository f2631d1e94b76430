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


# BM25 defaults of a collection: Anserini's k1/b, which land nearest the published BEIR BM25
# numbers (Lucene's own defaults are 1.2/0.75). Applied at query time, never stored in segments.
DEFAULT_BM25_K1 = 0.9
DEFAULT_BM25_B = 0.4

# A job in one of these states will not change again.
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobKind(enum.StrEnum):
    INGEST = "ingest"
    COMPACT = "compact"
    # Encode every user's history for a CTR model deployment (then switch it live).
    CTR_REBUILD = "ctr_rebuild"


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
    # BM25 parameters of the collection's lexical search: term-frequency saturation (k1 >= 0)
    # and document-length normalisation (0 <= b <= 1). Segments store raw term counts, so
    # these apply at query time and take effect without re-indexing.
    bm25_k1: Mapped[float] = mapped_column(
        Float, default=DEFAULT_BM25_K1, server_default=text(repr(DEFAULT_BM25_K1))
    )
    bm25_b: Mapped[float] = mapped_column(
        Float, default=DEFAULT_BM25_B, server_default=text(repr(DEFAULT_BM25_B))
    )
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


class DeploymentState(enum.StrEnum):
    BUILDING = "building"  # its users' histories are being encoded; not served yet
    ACTIVE = "active"  # the one served under its name
    RETIRED = "retired"  # replaced by a newer deployment of the name
    FAILED = "failed"  # its rebuild failed for good


class Item(Base):
    """One catalogue item (``POST /v1/items``): its id, category and metadata."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(512), unique=True)
    category: Mapped[str | None] = mapped_column(String(256), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class EventUser(Base):
    """Per user: how many events are stored and the newest one's id.

    Every events insert updates the row of each of its users in the same transaction (rows
    locked in user order first), so one user's events commit in id order: "events with an id
    above the last one encoded" never skips an event committed late.
    """

    __tablename__ = "event_users"

    user_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    n_events: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Event(Base):
    """One behaviour event (a user interacted with an item at a time).

    Idempotent on ``dedup_key``: the SHA-256 of the client's event id when it sent one, else
    of ``(user, item, timestamp)``. A user's history is ordered by ``(occurred_at, id)``.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_user_time", "user_id", "occurred_at", "id"),
        Index("ix_events_user_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(512))
    item_id: Mapped[str] = mapped_column(String(512))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rating: Mapped[float | None] = mapped_column(Float, nullable=True)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CTRDeployment(Base):
    """A CTR model deployed under a name. At most one deployment of a name is ``active``; a
    new one is ``building`` until every user's history is encoded for its version, then the
    switch (old retired, new active) is one transaction."""

    __tablename__ = "ctr_deployments"
    __table_args__ = (
        Index(
            "uq_ctr_deployments_active_name",
            "name",
            unique=True,
            postgresql_where=text("state = 'active'"),
            sqlite_where=text("state = 'active'"),
        ),
        Index("ix_ctr_deployments_name_state", "name", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(128))
    # The model's own copy under the data directory (the source may change afterwards).
    path: Mapped[str] = mapped_column(String(1024))
    source: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=DeploymentState.BUILDING)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    users: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
