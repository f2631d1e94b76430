"""Jobs: progress and outcome of background work."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AuthorizerDep, ContainerDep
from api.schemas import JobPublic
from service.jobs import show_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(job_id: str, c: ContainerDep, auth: AuthorizerDep) -> JobPublic:
    """Show a job's state and progress (403 for a key that does not reach its collection)."""
    auth.check("read")  # before the lookup: no key learns which job ids exist
    job = show_job(c, job_id)
    auth.check_collection(job.collection_name)
    return JobPublic.of(job)
