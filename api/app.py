"""The FastAPI application factory.

``uvicorn --factory api.app:create_app`` or ``quarry serve``. The lifespan builds the
container (:func:`service.build`), refuses to start on an unmigrated database or, with
``QUARRY_ENV=prod``, without any API key; loads the default embedding model (and the default
reranker with ``QUARRY_RERANK__PRELOAD``, warmed: :meth:`ranker.text.engine.ModelReranker.warm`);
and in the embedded mode resumes interrupted jobs and runs the housekeeping thread (reaper,
clean-up).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from api.docs import install_docs
from api.errors import install_error_handlers
from api.metrics import Metrics
from api.middleware import BodySizeLimit, RequestMetrics
from api.routers import collections, ctr, documents, embed, health, jobs, rerank, search
from api.state import AppState
from core.errors import QuarryError
from core.settings import Settings, get_settings
from service import Container, build
from service.jobs import Housekeeper, collect_garbage, reap
from service.rerank import default_reranker

logger = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def _check_auth(c: Container) -> None:
    if c.settings.env == "prod" and c.keys.active_keys() == 0:
        raise QuarryError(
            "QUARRY_ENV=prod needs API keys: set QUARRY_API_KEYS or create one with "
            "`quarry keys create NAME --scopes read,write,admin`."
        )


def _start_embedded_jobs(c: Container) -> Housekeeper:
    """No broker redelivers work in the embedded mode: requeue what a crash interrupted."""
    collect_garbage(c)
    reap(c, requeue_after_s=0.0)  # every queued job: no other process could be running it
    return Housekeeper(c).start()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Nothing is loaded until the lifespan starts."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        c = build(settings)  # raises DatabaseNotMigrated with instructions
        housekeeper = None
        try:
            _check_auth(c)
            c.serving.observe(metrics)
            # Blocking routes wait on the model queues: enough threads to keep them full.
            anyio.to_thread.current_default_thread_limiter().total_tokens = settings.serving.threads
            if settings.embedder.preload:
                c.embedders.get(settings.embedder.default_model)
            if settings.rerank.preload:
                reranker = c.rerankers.get(default_reranker(settings))
                warm = getattr(reranker, "warm", None)
                if warm is not None:  # CUDA graphs of common batch shapes, before traffic
                    await anyio.to_thread.run_sync(warm)
            if settings.resolved_task_mode == "inline":
                _release_stale_leases(c)
                housekeeper = _start_embedded_jobs(c)
            app.state.quarry = AppState(container=c, metrics=metrics, housekeeper=housekeeper)
            logger.info(
                "Quarry API ready (database %s, tasks %s)",
                c.engine.url.render_as_string(hide_password=True),
                settings.resolved_task_mode,
            )
            yield
        finally:
            if housekeeper is not None:
                housekeeper.stop()
            c.close()

    app = FastAPI(
        title="Quarry",
        version=API_VERSION,
        description="Retrieval, embedding and ranking service.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    install_docs(app, settings)
    for router in (
        health.router,
        health.metrics_router(settings.auth.open_metrics),
        collections.router,
        documents.router,
        jobs.router,
        search.router,
        rerank.router,
        embed.router,
        ctr.router,
    ):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _release_stale_leases(c: Container) -> None:
    """The embedded process is the only runner: a lease left by its previous life is void."""
    from sqlalchemy import update

    from core.db import session_scope
    from core.models import Job, JobState

    with session_scope(c.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.state == JobState.RUNNING)
            .values(state=JobState.QUEUED, lease_owner=None, lease_expires_at=None)
        )
