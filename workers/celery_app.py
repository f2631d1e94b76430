"""The Celery application, built from settings.

``celery -A workers.celery_app:app worker`` works: ``app`` is created on first attribute
access (PEP 562), so importing this module has no side effects.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from kombu import Queue

from core.settings import Settings, get_settings
from service.dispatch import QUEUE_CPU, QUEUE_GPU, TASK_QUEUES

logger = logging.getLogger(__name__)


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app with Redis broker/backend, the two queues and at-least-once delivery."""
    settings = settings or get_settings()
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    celery = Celery("quarry", broker=broker, backend=settings.result_backend or broker)
    celery.conf.update(
        task_queues=(Queue(QUEUE_GPU), Queue(QUEUE_CPU)),
        task_default_queue=QUEUE_CPU,
        task_routes={name: {"queue": q} for name, q in TASK_QUEUES.items()},
        # At-least-once: a task is acknowledged after it finished, and re-delivered if the
        # worker process dies mid-task. Tasks are idempotent, so a redelivery is harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 6 * 3600},
        worker_hijack_root_logger=False,
        task_track_started=True,
    )
    import workers.tasks  # noqa: F401  (registers the shared tasks on this app)

    return celery


@worker_init.connect
def _refuse_unmigrated(**_: Any) -> None:
    """Stop the worker at start when the schema is not at the latest revision."""
    from core.db import make_engine
    from core.migrate import ensure_migrated

    engine = make_engine(get_settings().resolved_database_url)
    try:
        ensure_migrated(engine)
    finally:
        engine.dispose()


@worker_process_init.connect
def _fresh_container(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections.
    from workers.tasks import set_container

    set_container(None)


_housekeeper: Any = None


@worker_ready.connect
def _start_housekeeping(**_: Any) -> None:
    """The worker's main process reaps lost jobs and removes stale segment files."""
    global _housekeeper
    from service import build
    from service.jobs import Housekeeper, collect_garbage, reap

    container = build(get_settings())
    try:
        collect_garbage(container)  # leftovers of a crash, at start-up
        reap(container)
    except Exception:
        logger.exception("Start-up housekeeping failed; the periodic round will retry")
    _housekeeper = Housekeeper(container).start()


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            _app = create_celery_app()
        return _app
    raise AttributeError(name)
