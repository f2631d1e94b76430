"""Getting jobs to whoever runs them: Celery in the full stack, a thread when embedded."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from core.errors import QuarryError, ServiceUnavailable
from core.models import JobKind
from workers.celery_app import TASK_COMPACT, TASK_INGEST, TASK_QUEUES
from workers.jobs import RUNNERS, fail_job
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

TASK_NAMES = {JobKind.INGEST: TASK_INGEST, JobKind.COMPACT: TASK_COMPACT}


class Dispatcher(Protocol):
    def submit(self, kind: JobKind, job_id: str) -> None: ...

    def close(self) -> None: ...


class CeleryDispatcher:
    """Send jobs to the Celery broker, onto the queue their task is routed to."""

    def __init__(self, broker_url: str, result_backend: str | None) -> None:
        from celery import Celery

        # A producer-only app: it needs the broker, not the tasks' code.
        self._app = Celery("quarry", broker=broker_url, backend=result_backend or broker_url)
        self._app.conf.broker_connection_retry_on_startup = True

    def submit(self, kind: JobKind, job_id: str) -> None:
        name = TASK_NAMES[kind]
        try:
            self._app.send_task(
                name,
                args=[job_id],
                queue=TASK_QUEUES[name],
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2},
            )
        except Exception as exc:
            logger.error("Could not enqueue job %s: %s", job_id, exc)
            raise ServiceUnavailable(
                "The task broker is unreachable; the job was not queued. Try again."
            ) from exc

    def close(self) -> None:
        self._app.close()


class InlineDispatcher:
    """Run jobs on one background thread of this process (the embedded mode)."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quarry-job")
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()

    def submit(self, kind: JobKind, job_id: str) -> None:
        future = self._pool.submit(self._run, kind, job_id)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, kind: JobKind, job_id: str) -> None:
        try:
            RUNNERS[kind](self._rt, job_id)
        except QuarryError as exc:
            fail_job(self._rt, job_id, exc.message)
        except Exception as exc:
            logger.exception("Job %s crashed", job_id)
            fail_job(self._rt, job_id, f"internal error ({type(exc).__name__}); see logs")

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted job has finished (tests, CLI)."""
        with self._lock:
            pending = list(self._futures)
        for fut in pending:
            fut.result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def make_dispatcher(runtime: Runtime) -> Dispatcher:
    settings = runtime.settings
    if settings.resolved_task_mode == "celery":
        assert settings.broker_url is not None  # checked by Settings
        return CeleryDispatcher(settings.broker_url, settings.result_backend)
    return InlineDispatcher(runtime)
