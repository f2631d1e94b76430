"""The FastAPI application factory.

``uvicorn --factory api.app:create_app`` or ``quarry serve``. The lifespan refuses to start
on an unmigrated database, loads the default embedding model, and wires the job dispatcher
(Celery when a broker is configured, an in-process thread otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import select

from api.auth import KeyStore
from api.errors import install_error_handlers
from api.metrics import Metrics
from api.middleware import BodySizeLimit, RequestMetrics
from api.routers import collections, documents, embed, health, jobs, search
from api.state import AppState
from core.db import session_scope
from core.models import Job, JobKind, JobState
from core.settings import Settings, get_settings
from indexer.cache import SegmentCache
from indexer.searcher import Searcher
from workers.dispatch import Dispatcher, InlineDispatcher, make_dispatcher
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def _resume_inline_jobs(runtime: Runtime, dispatcher: Dispatcher) -> None:
    """Embedded mode has no broker to redeliver work: requeue what a crash interrupted."""
    with session_scope(runtime.sessions) as s:
        rows = s.execute(
            select(Job.id, Job.kind).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
        ).all()
    for job_id, kind in rows:
        logger.info("Resuming unfinished %s job %s", kind, job_id)
        dispatcher.submit(JobKind(kind), job_id)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Nothing is loaded until the lifespan starts."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.create(settings)  # raises DatabaseNotMigrated with instructions
        dispatcher = make_dispatcher(runtime)
        cache = SegmentCache(runtime.segments_root, use_gpu=settings.index.use_gpu)
        if settings.embedder.preload:
            runtime.embedders.get(settings.embedder.default_model)
        app.state.quarry = AppState(
            runtime=runtime,
            dispatcher=dispatcher,
            cache=cache,
            searcher=Searcher(runtime.sessions, runtime.embedders, cache),
            metrics=metrics,
            keys=KeyStore(settings.api_keys, runtime.sessions),
        )
        if isinstance(dispatcher, InlineDispatcher):
            _resume_inline_jobs(runtime, dispatcher)
        logger.info(
            "Quarry API ready (database %s, tasks %s)",
            runtime.engine.url.render_as_string(hide_password=True),
            settings.resolved_task_mode,
        )
        try:
            yield
        finally:
            dispatcher.close()
            runtime.close()

    app = FastAPI(
        title="Quarry",
        version=API_VERSION,
        description="Retrieval, embedding and ranking service.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (
        health.router,
        collections.router,
        documents.router,
        jobs.router,
        search.router,
        embed.router,
    ):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
