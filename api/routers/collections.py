"""Collections: create, list, show, delete, compact."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, status
from sqlalchemy import func, select

from api.deps import ReadScope, SessionDep, StateDep, WriteScope, check_model_allowed
from api.schemas import (
    CollectionCreate,
    CollectionPublic,
    CollectionsPublic,
    CompactRequest,
    JobPublic,
)
from core import collections as repo
from core.jobs import create_job
from core.models import Collection, JobKind, Segment
from indexer import validate_spec

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _public(session: SessionDep, coll: Collection) -> CollectionPublic:
    n_segments, n_vectors = session.execute(
        select(func.count(), func.coalesce(func.sum(Segment.n_vectors), 0)).where(
            Segment.collection_id == coll.id, Segment.active.is_(True)
        )
    ).one()
    return CollectionPublic.of(
        coll,
        documents=repo.document_counts(session, coll.id),
        segments=int(n_segments),
        vectors=int(n_vectors),
    )


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[WriteScope])
def create_collection(
    body: CollectionCreate, session: SessionDep, state: StateDep
) -> CollectionPublic:
    """Create a collection; its vector size comes from the embedding model."""
    repo.validate_name(body.name)
    model = body.embedder or state.runtime.settings.embedder.default_model
    check_model_allowed(state.runtime.settings, model)
    embedder = state.runtime.embedders.get(model)
    validate_spec(body.index_spec, embedder.dim)
    coll = repo.create_collection(
        session,
        name=body.name,
        embedder=model,
        dim=embedder.dim,
        metric=body.metric,
        index_spec=body.index_spec,
        lexical=body.lexical,
        description=body.description,
    )
    session.commit()
    return _public(session, coll)


@router.get("", dependencies=[ReadScope])
def list_collections(session: SessionDep) -> CollectionsPublic:
    """List collections."""
    data = [_public(session, c) for c in repo.list_collections(session)]
    return CollectionsPublic(data=data, count=len(data))


@router.get("/{name}", dependencies=[ReadScope])
def get_collection(name: str, session: SessionDep) -> CollectionPublic:
    """Show one collection with document and segment counts."""
    return _public(session, repo.get_collection(session, name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteScope])
def delete_collection(name: str, session: SessionDep, state: StateDep) -> None:
    """Delete a collection, its documents and its index files."""
    coll = repo.delete_collection(session, name)
    session.commit()
    state.cache.invalidate(coll.id)
    shutil.rmtree(state.runtime.segments_root / str(coll.id), ignore_errors=True)


@router.post("/{name}/compact", status_code=status.HTTP_202_ACCEPTED, dependencies=[WriteScope])
def compact_collection(
    name: str, session: SessionDep, state: StateDep, body: CompactRequest | None = None
) -> JobPublic:
    """Merge the collection's segments into one index built from its FAISS factory string."""
    coll = repo.get_collection(session, name)
    spec = (body.index_spec if body else None) or coll.index_spec
    validate_spec(spec, coll.dim)
    job = create_job(session, JobKind.COMPACT, collection_id=coll.id, params={"index_spec": spec})
    session.commit()
    state.dispatcher.submit(JobKind.COMPACT, job.id)
    state.metrics.jobs_enqueued.labels(JobKind.COMPACT).inc()
    return JobPublic.of(job, coll.name)
