"""Jobs: progress and outcome of background work."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ReadScope, SessionDep
from api.schemas import JobPublic
from core.jobs import get_job as load_job
from core.models import Collection

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", dependencies=[ReadScope])
def get_job(job_id: str, session: SessionDep) -> JobPublic:
    """Show a job's state and progress."""
    job = load_job(session, job_id)
    coll = session.get(Collection, job.collection_id) if job.collection_id else None
    return JobPublic.of(job, coll.name if coll else None)
