"""Collections: create, list, show and drop; compaction is queued here too."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import collections as repo
from core.db import session_scope
from core.errors import CollectionNotFound
from core.jobs import cancel_jobs, create_job
from core.models import (
    DEFAULT_BM25_B,
    DEFAULT_BM25_K1,
    Collection,
    Job,
    JobKind,
    Segment,
    utcnow,
)
from indexer import drop_collection as drop_collection_files
from indexer import validate_spec
from service.jobs import submit

if TYPE_CHECKING:
    from service.container import Container

logger = logging.getLogger(__name__)


@dataclass
class CollectionInfo:
    """A collection with its document, segment and vector counts."""

    collection: Collection
    documents: dict[str, int]
    segments: int
    vectors: int


def _info(s: Session, coll: Collection) -> CollectionInfo:
    n_segments, n_vectors = s.execute(
        select(func.count(), func.coalesce(func.sum(Segment.n_vectors), 0)).where(
            Segment.collection_id == coll.id, Segment.active.is_(True)
        )
    ).one()
    return CollectionInfo(coll, repo.document_counts(s, coll.id), int(n_segments), int(n_vectors))


def create_collection(
    c: Container,
    name: str,
    *,
    embedder: str | None = None,
    metric: str = "cosine",
    index_spec: str = "Flat",
    lexical: bool = True,
    bm25_k1: float = DEFAULT_BM25_K1,
    bm25_b: float = DEFAULT_BM25_B,
    description: str | None = None,
) -> CollectionInfo:
    """Create a collection; its vector size comes from the embedding model (loaded here).

    ``bm25_k1``/``bm25_b`` parameterise its lexical (BM25) search, at query time.
    """
    repo.validate_name(name)
    repo.check_bm25(bm25_k1, bm25_b)  # before loading a model for nothing
    model = embedder or c.settings.embedder.default_model
    dim = c.embedders.get(model).dim
    validate_spec(index_spec, dim)
    with session_scope(c.sessions) as s:
        coll = repo.create_collection(
            s,
            name=name,
            embedder=model,
            dim=dim,
            metric=metric,
            index_spec=index_spec,
            lexical=lexical,
            bm25_k1=bm25_k1,
            bm25_b=bm25_b,
            description=description,
        )
        logger.info("Created collection %s (model %s, dim %d)", name, model, dim)
        return _info(s, coll)


def ensure_collection(
    c: Container,
    name: str,
    *,
    embedder: str | None = None,
    index_spec: str = "Flat",
    bm25_k1: float = DEFAULT_BM25_K1,
    bm25_b: float = DEFAULT_BM25_B,
) -> None:
    """Create the collection unless it exists (batch indexing, the demo, evaluation).

    The parameters apply to a new collection only; an existing one is left as it is.
    """
    with session_scope(c.sessions) as s:
        try:
            repo.get_collection(s, name)
            return
        except CollectionNotFound:
            pass
    create_collection(
        c, name, embedder=embedder, index_spec=index_spec, bm25_k1=bm25_k1, bm25_b=bm25_b
    )


def list_collections(c: Container) -> list[CollectionInfo]:
    with session_scope(c.sessions) as s:
        return [_info(s, coll) for coll in repo.list_collections(s)]


def get_collection(c: Container, name: str) -> CollectionInfo:
    with session_scope(c.sessions) as s:
        return _info(s, repo.get_collection(s, name))


def drop_collection(c: Container, name: str) -> list[str]:
    """Delete a collection, its documents and index files; cancel its unfinished jobs.

    The job rows stay (state ``cancelled``); a worker running one stops at its next chunk.
    Returns the ids of the cancelled jobs.
    """
    with session_scope(c.sessions) as s:
        coll = repo.get_collection(s, name)
        cid = coll.id
        cancelled = cancel_jobs(s, cid)
        repo.delete_collection(s, name)
    c.segments.invalidate(cid)
    drop_collection_files(c.segments_root, cid)
    if cancelled:
        logger.info("Collection %s deleted; cancelled jobs %s", name, cancelled)
    return cancelled


def compact(c: Container, name: str, index_spec: str | None = None) -> Job:
    """Queue a compaction of the collection into one index of ``index_spec`` (or its own)."""
    with session_scope(c.sessions) as s:
        coll = repo.get_collection(s, name)
        spec = index_spec or coll.index_spec
        validate_spec(spec, coll.dim)
        job = create_job(
            s,
            JobKind.COMPACT,
            collection_id=coll.id,
            collection_name=coll.name,
            params={"index_spec": spec},
        )
        job.dispatched_at = utcnow()
    submit(c, JobKind.COMPACT, job.id)
    return job
