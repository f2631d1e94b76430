"""Documents: batch ingest (returns a job), get, delete."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import ReadScope, SessionDep, StateDep, WriteScope
from api.schemas import (
    DeletedPublic,
    DocumentPublic,
    DocumentsDelete,
    DocumentsIngest,
    IngestAccepted,
    JobPublic,
)
from core import documents as repo
from core.collections import get_collection
from core.errors import InvalidRequest, PayloadTooLarge, QuarryError
from core.jobs import create_job, finish
from core.models import Document, JobKind

router = APIRouter(prefix="/v1/collections/{name}/documents", tags=["documents"])


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
    name: str, body: DocumentsIngest, session: SessionDep, state: StateDep
) -> IngestAccepted:
    """Store documents and queue a job that embeds and indexes them."""
    limits = state.runtime.settings.limits
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
    coll = get_collection(session, name)
    job = create_job(session, JobKind.INGEST, collection_id=coll.id)
    result = repo.upsert_documents(
        session,
        coll,
        [repo.DocumentIn(d.id, d.text, d.metadata) for d in body.documents],
        job_id=job.id,
    )
    job.total = len(result.pending_ids)
    job.skipped = result.unchanged
    if not result.pending_ids:
        finish(session, job)
    session.commit()
    if result.pending_ids:
        try:
            state.dispatcher.submit(JobKind.INGEST, job.id)
        except QuarryError as exc:
            finish(session, job, error=exc.message)
            session.commit()
            raise
        state.metrics.jobs_enqueued.labels(JobKind.INGEST).inc()
    return IngestAccepted(
        job=JobPublic.of(job, coll.name),
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
    )


@router.get("/{doc_id}", dependencies=[ReadScope])
def get_document(name: str, doc_id: str, session: SessionDep) -> DocumentPublic:
    """Fetch one document by its id."""
    coll = get_collection(session, name)
    return _public(repo.get_document(session, coll.id, doc_id))


@router.delete("/{doc_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteScope])
def delete_document(name: str, doc_id: str, session: SessionDep) -> None:
    """Delete one document; it disappears from search at once."""
    coll = get_collection(session, name)
    repo.get_document(session, coll.id, doc_id)  # 404 for an unknown id
    repo.delete_documents(session, coll, [doc_id])
    session.commit()


@router.post("/delete", dependencies=[WriteScope])
def delete_documents(name: str, body: DocumentsDelete, session: SessionDep) -> DeletedPublic:
    """Delete many documents by id; unknown ids are ignored."""
    coll = get_collection(session, name)
    deleted = repo.delete_documents(session, coll, body.ids)
    session.commit()
    return DeletedPublic(deleted=deleted)
