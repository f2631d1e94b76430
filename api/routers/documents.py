"""Documents: batch ingest (returns a job), get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from api.deps import ContainerDep, ReadScope, StateDep, WriteScope
from api.schemas import (
    DeletedPublic,
    DocumentPublic,
    DocumentsDelete,
    DocumentsIngest,
    IngestAccepted,
    JobPublic,
)
from core.errors import InvalidRequest, PayloadTooLarge
from core.models import Document, JobKind
from core.text import NO_NUL_PATTERN
from service import documents as use
from service.ingest import ingest

router = APIRouter(prefix="/v1/collections/{name}/documents", tags=["documents"])

# Ids may hold any character but NUL (Postgres refuses it): "/" included, sent as is or as %2F.
DocId = Annotated[
    str, Path(pattern=NO_NUL_PATTERN, description='The document\'s id; "/" is allowed')
]


def _public(doc: Document) -> DocumentPublic:
    return DocumentPublic(
        id=doc.external_id,
        text=doc.text,
        metadata=dict(doc.meta or {}),
        state=doc.state,
        created_at=doc.created_at,
        updated_at=doc.updated_at,
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, dependencies=[WriteScope])
def ingest_documents(
    name: str, body: DocumentsIngest, c: ContainerDep, state: StateDep
) -> IngestAccepted:
    """Store documents and queue a job that embeds and indexes them."""
    limits = c.settings.limits
    if len(body.documents) > limits.max_batch_docs:
        raise PayloadTooLarge(
            f"{len(body.documents)} documents in one request; the limit is "
            f"{limits.max_batch_docs}. Split the batch."
        )
    for doc in body.documents:
        if len(doc.text) > limits.max_text_chars:
            raise InvalidRequest(
                f"Document {doc.id!r} has {len(doc.text)} characters; the limit is "
                f"{limits.max_text_chars}"
            )
    outcome = ingest(c, name, body.documents)
    if outcome.queued:
        state.metrics.jobs_enqueued.labels(JobKind.INGEST).inc()
    return IngestAccepted(
        job=JobPublic.of(outcome.job),
        created=outcome.created,
        updated=outcome.updated,
        unchanged=outcome.unchanged,
    )


# ``:path`` so that ids containing "/" (accepted at ingest) can be fetched and deleted too.
@router.get("/{doc_id:path}", dependencies=[ReadScope])
def get_document(name: str, doc_id: DocId, c: ContainerDep) -> DocumentPublic:
    """Fetch one document by its id."""
    return _public(use.get_document(c, name, doc_id))


@router.delete("/{doc_id:path}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteScope])
def delete_document(name: str, doc_id: DocId, c: ContainerDep) -> None:
    """Delete one document; it disappears from search at once."""
    use.delete_document(c, name, doc_id)


@router.post("/delete", dependencies=[WriteScope])
def delete_documents(name: str, body: DocumentsDelete, c: ContainerDep) -> DeletedPublic:
    """Delete many documents by id; unknown ids are ignored."""
    return DeletedPublic(deleted=use.delete_documents(c, name, body.ids))
