"""Collections: create, list, show, delete, compact."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import AdminScope, AuthorizerDep, ContainerDep, ReadScope, StateDep, WriteScope
from api.schemas import (
    CollectionCreate,
    CollectionPublic,
    CollectionsPublic,
    CompactRequest,
    JobPublic,
)
from core.models import JobKind
from service import collections as use
from service.collections import CollectionInfo
from service.embed import check_model_allowed

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _public(info: CollectionInfo) -> CollectionPublic:
    return CollectionPublic.of(
        info.collection, documents=info.documents, segments=info.segments, vectors=info.vectors
    )


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[WriteScope])
def create_collection(
    body: CollectionCreate, c: ContainerDep, auth: AuthorizerDep
) -> CollectionPublic:
    """Create a collection; its vector size comes from the embedding model."""
    auth.check("write", body.name)  # a key restricted to some collections creates only those
    if body.embedder is not None:
        check_model_allowed(c.settings, body.embedder)
    info = use.create_collection(
        c,
        body.name,
        embedder=body.embedder,
        metric=body.metric,
        index_spec=body.index_spec,
        lexical=body.lexical,
        description=body.description,
        bm25_k1=body.bm25_k1,
        bm25_b=body.bm25_b,
    )
    return _public(info)


@router.get("", dependencies=[ReadScope])
def list_collections(c: ContainerDep, auth: AuthorizerDep) -> CollectionsPublic:
    """List the collections the key reaches."""
    data = [_public(info) for info in use.list_collections(c) if auth.covers(info.collection.name)]
    return CollectionsPublic(data=data, count=len(data))


@router.get("/{name}", dependencies=[ReadScope])
def get_collection(name: str, c: ContainerDep) -> CollectionPublic:
    """Show one collection with document and segment counts."""
    return _public(use.get_collection(c, name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[AdminScope])
def delete_collection(name: str, c: ContainerDep) -> None:
    """Delete a collection, its documents and index files; its unfinished jobs are cancelled."""
    use.drop_collection(c, name)


@router.post("/{name}/compact", status_code=status.HTTP_202_ACCEPTED, dependencies=[WriteScope])
def compact_collection(
    name: str, c: ContainerDep, state: StateDep, body: CompactRequest | None = None
) -> JobPublic:
    """Merge the collection's segments into one index built from its FAISS factory string."""
    job = use.compact(c, name, body.index_spec if body else None)
    state.metrics.jobs_enqueued.labels(JobKind.COMPACT).inc()
    return JobPublic.of(job)
