"""CTR model deployments: deploy a model directory under a name, rebuild every user's encoded
history for it (a job, ``GET /v1/jobs/{id}``), and switch the name to it in one transaction.

``quarry ctr deploy DIR --name NAME`` copies the model under the data directory (the served
files cannot change under it), records a ``building`` deployment and queues the rebuild. The
previous deployment serves until the rebuild is done; then the old one is retired (its states
expire after ``ctr.retired_state_ttl_s``) and the new one is active, and every API process
follows within ``ctr.deployment_cache_s``. With the embedded in-process store there is
nothing to build ahead: the switch is immediate and users are encoded on first use.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.collections import NAME_RE
from core.db import session_scope
from core.errors import BrokerUnavailable, InvalidRequest, QuarryError
from core.jobs import claim, create_job, finish, get_job, release, set_progress
from core.models import FINISHED_STATES, CTRDeployment, DeploymentState, Job, JobKind, utcnow
from ranker.ctr import CTRServingModel
from service.ctr import DeploymentInfo, live_deployments, refresh_user, runtime
from service.ctr_events import count_users, users_page

if TYPE_CHECKING:
    from core.settings import Settings
    from service.container import Container
    from service.jobs import Lease

logger = logging.getLogger(__name__)

__all__ = [
    "DeployOutcome",
    "deploy",
    "follow_rebuild",
    "rebuild",
    "run_rebuild",
    "run_rebuild_job",
]


@dataclass
class DeployOutcome:
    deployment: DeploymentInfo
    job: Job | None
    #: Whether the model was the one already serving the name (nothing was done).
    unchanged: bool = False


def _models_dir(settings: Settings) -> Path:
    return settings.data_dir / "ctr-models"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120] or "model"


def _copy_model(settings: Settings, source: Path, model: CTRServingModel) -> Path:
    """The model's own copy under the data directory (copied to a temporary name, then
    renamed): the deployment serves these files whatever happens to ``source`` later."""
    root = _models_dir(settings)
    dest = root / f"{_safe(model.kind)}-{_safe(model.version)}"
    final = dest if source.is_dir() else dest / source.name
    if final.exists():
        return final  # the same version: the same weights
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    try:
        if source.is_dir():
            shutil.copytree(source, tmp)
        else:
            tmp.mkdir()
            shutil.copy2(source, tmp / source.name)
        try:
            tmp.rename(dest)
        except OSError:
            if not final.exists():  # not another deploy of the same version that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def deploy(c: Container, source: Path, name: str, *, rebuild: bool | None = None) -> DeployOutcome:
    """Deploy the CTR model at ``source`` under ``name``.

    With ``rebuild`` (the default when the state store is shared, i.e. Redis) a job encodes
    every user's history for the new version and then switches the name to it; the previous
    deployment serves until then. Without it (the embedded store lives in one process, so
    there is nothing to build ahead) the switch is immediate and each user is encoded on
    first use.
    """
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"Invalid model name {name!r}: use 1-128 letters, digits, '_', '.', '-', starting "
            "with a letter or digit."
        )
    source = Path(source)
    if not source.exists():
        raise InvalidRequest(f"Model not found: {source}")
    rt = runtime(c)
    model = rt.models.load(source)
    if rebuild is None:
        rebuild = rt.store.shared
    path = _copy_model(c.settings, source, model)
    retired: list[str] = []
    with session_scope(c.sessions) as s:
        current = s.scalar(
            select(CTRDeployment).where(
                CTRDeployment.name == name, CTRDeployment.state == DeploymentState.ACTIVE
            )
        )
        if current is not None and current.version == model.version:
            return DeployOutcome(DeploymentInfo.of(current), None, unchanged=True)
        users = count_users(s)
        job = create_job(s, JobKind.CTR_REBUILD, collection_id=None, total=users)
        dep = CTRDeployment(
            name=name,
            kind=model.kind,
            version=model.version,
            path=str(path.resolve()),
            source=str(source.resolve())[:1024],
            state=DeploymentState.BUILDING,
            job_id=job.id,
            users=0,
        )
        s.add(dep)
        s.flush()
        job.params = {"deployment": dep.id, "model": name, "version": model.version}
        if rebuild:
            job.dispatched_at = utcnow()
        else:
            job.params = {**job.params, "note": "in-process state store: encoded on first use"}
            retired = _switch(s, dep)
            finish(s, job)
    if not rebuild:
        _expire(c, retired)
        rt.forget()
        return DeployOutcome(_info(c, dep.id), _job(c, job.id))
    _submit(c, job.id, dep.id)
    return DeployOutcome(_info(c, dep.id), _job(c, job.id))


def rebuild(c: Container, name: str) -> DeployOutcome:
    """Encode every user's history again for the deployment serving ``name`` (a job)."""
    if not runtime(c).store.shared:
        raise InvalidRequest(
            "Nothing to rebuild: without Redis the encoded histories live inside the server "
            "process, which encodes each user on first use"
        )
    dep = runtime(c).active(name)
    with session_scope(c.sessions) as s:
        job = create_job(s, JobKind.CTR_REBUILD, collection_id=None, total=count_users(s))
        job.params = {"deployment": dep.id, "model": name, "version": dep.version}
        job.dispatched_at = utcnow()
    _submit(c, job.id, None)
    return DeployOutcome(dep, _job(c, job.id))


def _submit(c: Container, job_id: str, deployment_id: int | None) -> None:
    from service.jobs import submit

    try:
        submit(c, JobKind.CTR_REBUILD, job_id)
    except BrokerUnavailable as exc:
        if deployment_id is not None:
            _fail_deployment(c, deployment_id, exc.message)
        raise


def _info(c: Container, deployment_id: int) -> DeploymentInfo:
    with session_scope(c.sessions) as s:
        row = s.get(CTRDeployment, deployment_id)
        assert row is not None
        return DeploymentInfo.of(row)


def _job(c: Container, job_id: str) -> Job:
    with session_scope(c.sessions) as s:
        return get_job(s, job_id)


def _switch(s: Session, dep: CTRDeployment) -> list[str]:
    """Make ``dep`` the active deployment of its name in this transaction; returns the
    versions retired. A newer deployment already active wins (``dep`` is retired)."""
    now = utcnow()
    active = s.scalars(
        select(CTRDeployment)
        .where(CTRDeployment.name == dep.name, CTRDeployment.state == DeploymentState.ACTIVE)
        .with_for_update()
    ).all()
    if any(a.id > dep.id for a in active):
        dep.state, dep.retired_at = DeploymentState.RETIRED, now
        return []
    for old in active:
        old.state, old.retired_at = DeploymentState.RETIRED, now
    s.flush()  # retired before the new one is active: one active row per name
    dep.state, dep.activated_at = DeploymentState.ACTIVE, now
    return [old.version for old in active if old.version != dep.version]


def _expire(c: Container, versions: Sequence[str]) -> None:
    """Let the states of retired versions expire (unless a live deployment still uses one)."""
    if not versions:
        return
    in_use = {d.version for d in live_deployments(c)}
    ttl = c.settings.ctr.retired_state_ttl_s
    for version in set(versions) - in_use:
        try:
            n = runtime(c).store.expire_version(version, ttl)
            logger.info("CTR states of retired version %s (%d) expire in %.0fs", version, n, ttl)
        except Exception as exc:
            logger.warning("Could not expire the states of version %s: %s", version, exc)


def _fail_deployment(c: Container, deployment_id: int, message: str) -> None:
    with session_scope(c.sessions) as s:
        dep = s.get(CTRDeployment, deployment_id)
        if dep is not None and dep.state == DeploymentState.BUILDING:
            dep.state, dep.error = DeploymentState.FAILED, message


def run_rebuild(c: Container, job_id: str) -> int:
    """The rebuild job: encode every user with events for the job's deployment, then switch
    the name to it (when it is being deployed). Returns the users encoded.

    Idempotent: a re-run encodes everyone again and writes only states at least as new as the
    stored ones. A domain error fails the job and the deployment; anything else gives the job
    back (a retry or the reaper runs it again).
    """
    from service.jobs import JobCancelled, Lease, worker_id

    owner = worker_id()
    with session_scope(c.sessions) as s:
        job = get_job(s, job_id)
        if job.state in FINISHED_STATES:
            return 0
        dep_row = s.get(CTRDeployment, int(job.params.get("deployment", 0)))
        if dep_row is None or dep_row.state not in (
            DeploymentState.ACTIVE,
            DeploymentState.BUILDING,
        ):
            finish(s, job, error="the deployment is gone, failed or retired")
            return 0
        dep = DeploymentInfo.of(dep_row)
        if job.attempts >= c.settings.jobs.max_attempts:
            message = f"gave up after {job.attempts} attempts (see worker logs)"
            finish(s, job, error=message)
            if dep_row.state == DeploymentState.BUILDING:
                dep_row.state, dep_row.error = DeploymentState.FAILED, message
            return 0
        if not claim(s, job_id, owner, c.settings.jobs.lease_s):
            return 0
    lease = Lease(c, job_id, owner)
    try:
        return _rebuild(c, job_id, dep, lease)
    except JobCancelled:
        return 0
    except QuarryError as exc:
        logger.warning("CTR rebuild %s failed: %s", job_id, exc.message)
        with session_scope(c.sessions) as s:
            job = get_job(s, job_id)
            if job.state not in FINISHED_STATES:
                finish(s, job, error=exc.message)
        _fail_deployment(c, dep.id, exc.message)
        return 0
    except BaseException:
        with session_scope(c.sessions) as s:
            release(s, job_id, owner)
        raise
    finally:
        lease.stop()


def _rebuild(c: Container, job_id: str, dep: DeploymentInfo, lease: Lease) -> int:
    rt = runtime(c)
    served = rt.models.get(dep)
    batch = c.settings.ctr.rebuild_batch_users
    with session_scope(c.sessions) as s:
        total = count_users(s)
        get_job(s, job_id).total = total
    done, after = 0, None
    t0 = time.perf_counter()
    while True:
        lease.check()
        with session_scope(c.sessions) as s:
            users = users_page(s, after, batch)
        if not users:
            break
        for user in users:
            refresh_user(c, dep, served, user, full=True)
        done += len(users)
        after = users[-1]
        with session_scope(c.sessions) as s:
            set_progress(s, job_id, done)
    lease.check()
    retired: list[str] = []
    with session_scope(c.sessions) as s:
        row = s.get(CTRDeployment, dep.id, with_for_update=True)
        job = get_job(s, job_id)
        if row is not None and row.state == DeploymentState.BUILDING:
            retired = _switch(s, row)
        if row is not None:
            row.users = done
        job.done, job.total = done, max(job.total, done)
        finish(s, job)
    _expire(c, retired)
    rt.forget()
    logger.info(
        "CTR rebuild %s: %d users encoded for %s (%s) in %.1fs",
        job_id,
        done,
        dep.name,
        dep.version,
        time.perf_counter() - t0,
    )
    return done


def run_rebuild_job(c: Container, job_id: str) -> None:
    """Run a rebuild to its end in this thread, recording any failure (the embedded mode)."""
    from service.jobs import fail_job

    try:
        run_rebuild(c, job_id)
    except Exception as exc:
        logger.exception("CTR rebuild %s crashed", job_id)
        fail_job(c, job_id, f"internal error ({type(exc).__name__}); see logs")
        with session_scope(c.sessions) as s:
            job = s.get(Job, job_id)
            dep_id = int(job.params.get("deployment", 0)) if job is not None else 0
        _fail_deployment(c, dep_id, f"rebuild crashed ({type(exc).__name__})")


def follow_rebuild(
    c: Container, job_id: str, *, show_progress: bool = True, poll_s: float = 0.5
) -> Job:
    """Poll a rebuild job with a progress bar (users encoded) until it finishes."""
    from tqdm import tqdm

    with tqdm(total=0, unit="user", desc="encoding", disable=not show_progress) as bar:
        while True:
            job = _job(c, job_id)
            bar.total, bar.n = job.total, job.done
            bar.refresh()
            if job.state in FINISHED_STATES:
                return job
            time.sleep(poll_s)
