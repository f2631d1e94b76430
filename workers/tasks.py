"""Celery tasks: thin wrappers that retry transient failures and record permanent ones."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task, shared_task
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError

from core.errors import QuarryError
from core.settings import get_settings
from service import Container, build
from service.ctr import encode_users
from service.ctr_deploy import run_rebuild
from service.dispatch import TASK_BSE, TASK_COMPACT, TASK_CTR_REBUILD, TASK_INGEST, TASK_REAP
from service.jobs import fail_job, reap, run_compact, run_ingest

logger = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError,
    DBAPIError,
    RedisConnectionError,
    ConnectionError,
    TimeoutError,
)
MAX_RETRIES = 5

_container: Container | None = None
_lock = threading.Lock()


def get_container() -> Container:
    """The worker process's container, built on first use (after the fork)."""
    global _container
    with _lock:
        if _container is None:
            _container = build(get_settings())
        return _container


def set_container(container: Container | None) -> None:
    """Install (or clear) the process's container; the fork hook and tests use it."""
    global _container
    with _lock:
        _container = container


def _run(task: Task, runner: Any, job_id: str) -> int:
    c = get_container()
    try:
        return int(runner(c, job_id))
    except QuarryError as exc:  # a domain error will not heal by retrying
        logger.warning("Job %s failed: %s", job_id, exc.message)
        fail_job(c, job_id, exc.message)
        return 0
    except TRANSIENT as exc:
        if task.request.retries >= MAX_RETRIES:
            fail_job(c, job_id, f"gave up after {MAX_RETRIES} retries: {type(exc).__name__}")
            raise
        delay = min(2 ** (task.request.retries + 1), 60)
        logger.warning("Job %s: transient %s, retrying in %ss", job_id, type(exc).__name__, delay)
        raise task.retry(exc=exc, countdown=delay, max_retries=MAX_RETRIES) from exc
    except Exception as exc:
        logger.exception("Job %s crashed", job_id)
        fail_job(c, job_id, f"internal error ({type(exc).__name__}); see worker logs")
        raise


@shared_task(bind=True, name=TASK_INGEST, acks_late=True, max_retries=MAX_RETRIES)
def ingest(self: Task, job_id: str) -> int:
    """Embed a job's pending documents and commit them as segments."""
    return _run(self, run_ingest, job_id)


@shared_task(bind=True, name=TASK_COMPACT, acks_late=True, max_retries=MAX_RETRIES)
def compact(self: Task, job_id: str) -> int:
    """Merge a collection's segments into one index of its spec."""
    return _run(self, run_compact, job_id)


@shared_task(bind=True, name=TASK_CTR_REBUILD, acks_late=True, max_retries=MAX_RETRIES)
def ctr_rebuild(self: Task, job_id: str) -> int:
    """Encode every user's history for a CTR deployment, then switch its name to it."""
    return _run(self, run_rebuild, job_id)


@shared_task(bind=True, name=TASK_BSE, acks_late=True, max_retries=MAX_RETRIES)
def bse(self: Task, *user_ids: str) -> int:
    """Bring these users' encoded histories up to date (idempotent: a redelivery finds them
    current and writes nothing)."""
    try:
        return encode_users(get_container(), list(user_ids))
    except QuarryError as exc:  # e.g. a model that cannot load: the score path catches up
        logger.warning("BSE of %d user(s) failed: %s", len(user_ids), exc.message)
        return 0
    except TRANSIENT as exc:
        if self.request.retries >= MAX_RETRIES:
            raise
        delay = min(2 ** (self.request.retries + 1), 60)
        raise self.retry(exc=exc, countdown=delay, max_retries=MAX_RETRIES) from exc


@shared_task(name=TASK_REAP)
def reap_jobs() -> int:
    """Re-dispatch lost jobs now (the housekeeping thread does it periodically too)."""
    report = reap(get_container())
    return len(report.expired) + len(report.resent)
