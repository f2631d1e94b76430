"""Getting jobs to whoever runs them: Celery in the full stack, a thread when embedded.

The task names and queues live here (not in ``workers/``) because the application layer
sends the tasks; ``workers.celery_app`` registers the task bodies under the same names.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from core.errors import BrokerUnavailable
from core.models import JobKind

if TYPE_CHECKING:
    from service.container import Container

logger = logging.getLogger(__name__)

TASK_INGEST = "quarry.ingest"
TASK_COMPACT = "quarry.compact"
TASK_REAP = "quarry.reap"
# Bring users' encoded behaviour sequences up to date (args: user ids); not a job row.
TASK_BSE = "quarry.bse"
TASK_CTR_REBUILD = "quarry.ctr_rebuild"
QUEUE_GPU = "gpu"
QUEUE_CPU = "cpu"
# Embedding wants the accelerator; compaction (FAISS training on vectors), the reaper and
# CTR history encoding (numpy over small embedding tables) run on CPU.
TASK_QUEUES = {
    TASK_INGEST: QUEUE_GPU,
    TASK_COMPACT: QUEUE_CPU,
    TASK_REAP: QUEUE_CPU,
    TASK_BSE: QUEUE_CPU,
    TASK_CTR_REBUILD: QUEUE_CPU,
}
TASK_NAMES = {
    JobKind.INGEST: TASK_INGEST,
    JobKind.COMPACT: TASK_COMPACT,
    JobKind.CTR_REBUILD: TASK_CTR_REBUILD,
}
# A request never waits long on a broker that is down: connect and send time out fast,
# and the job is left for the reaper (or marked failed by the caller).
BROKER_TIMEOUT_S = 1.0


class Dispatcher(Protocol):
    def submit(self, kind: JobKind, job_id: str) -> None: ...

    def send(self, name: str, args: list[str], *, countdown: float | None = None) -> None:
        """Send a task that is not a job (``TASK_BSE``)."""
        ...

    def close(self) -> None: ...


class CeleryDispatcher:
    """Send jobs to the Celery broker, onto the queue their task is routed to."""

    def __init__(self, broker_url: str, *, timeout_s: float = BROKER_TIMEOUT_S) -> None:
        from celery import Celery

        # A producer-only app: it needs the broker, not the tasks' code, and it never reads
        # task results, so it has no result backend (whose retries once stalled requests).
        self._app = Celery("quarry", broker=broker_url, backend=None)
        self._app.conf.update(
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=timeout_s,
            broker_connection_max_retries=0,
            broker_transport_options={
                "socket_connect_timeout": timeout_s,
                "socket_timeout": timeout_s,
                "max_retries": 0,
            },
            task_ignore_result=True,
        )

    def submit(self, kind: JobKind, job_id: str) -> None:
        name = TASK_NAMES[kind]
        self.send(name, [job_id])

    def send(self, name: str, args: list[str], *, countdown: float | None = None) -> None:
        """Send one task message or raise :class:`BrokerUnavailable` within a few seconds
        (``countdown``: run it no sooner than that many seconds from now)."""
        try:
            self._app.send_task(
                name,
                args=args,
                countdown=countdown or None,
                queue=TASK_QUEUES[name],
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2},
                ignore_result=True,
            )
        except Exception as exc:
            logger.error("Could not send %s%s to the broker: %s", name, args, exc)
            raise BrokerUnavailable(
                "The task broker is unreachable; the job was not queued. Try again shortly."
            ) from exc

    def close(self) -> None:
        self._app.close()


class InlineDispatcher:
    """Run jobs on one background thread of this process (the embedded mode)."""

    def __init__(self, container: Container) -> None:
        self._container = container
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

    def send(self, name: str, args: list[str], *, countdown: float | None = None) -> None:
        """Run a non-job task on the same thread (in the embedded mode ``countdown`` is not
        waited for: the thread would idle)."""
        if name != TASK_BSE:
            raise ValueError(f"No in-process runner for task {name!r}")
        future = self._pool.submit(self._encode, list(args))
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _encode(self, users: list[str]) -> None:
        from service.ctr import encode_users

        try:
            encode_users(self._container, users)
        except Exception:  # the score path encodes users whose state is behind
            logger.exception("Encoding the histories of %d user(s) failed", len(users))

    def _run(self, kind: JobKind, job_id: str) -> None:
        if kind == JobKind.CTR_REBUILD:
            from service.ctr_deploy import run_rebuild_job

            run_rebuild_job(self._container, job_id)
            return
        from service.jobs import run_job

        run_job(self._container, kind, job_id)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted job has finished (tests, CLI)."""
        with self._lock:
            pending = list(self._futures)
        for fut in pending:
            fut.result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def make_dispatcher(container: Container) -> Dispatcher:
    settings = container.settings
    if settings.resolved_task_mode == "celery":
        assert settings.broker_url is not None  # checked by Settings
        return CeleryDispatcher(settings.broker_url)
    return InlineDispatcher(container)
