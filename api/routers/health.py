"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import AuthHeader, ContainerDep, StateDep, require
from api.schemas import Readiness
from service.keys import Grant

router = APIRouter(tags=["health"])

# Health checks never wait behind request work: /healthz runs on the event loop, /readyz's
# blocking pings on threads of their own rather than the shared request thread pool.
_probe_threads = anyio.CapacityLimiter(4)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        200: {"model": Readiness, "description": "Ready"},
        503: {"model": Readiness, "description": "Not ready (see checks)"},
    },
    # Open to probes; a read key only adds the names of degraded collections it reaches.
    openapi_extra={"security": [{}, {"HTTPBearer": []}]},
)
async def readyz(c: ContainerDep, authorization: AuthHeader) -> JSONResponse:
    """Readiness: database and broker reachable, default model loaded; degraded collections.

    Open to probes without a key. A corrupt segment degrades its collection (listed under
    ``checks.degraded``) but leaves the replica ready for the others; while auth is on, only a
    ``read`` key sees the names of the collections it reaches, the rest are counted under
    ``"*"``.
    """
    return await anyio.to_thread.run_sync(_readiness, c, authorization, limiter=_probe_threads)


def _readiness(c: ContainerDep, authorization: str | None = None) -> JSONResponse:
    settings = c.settings
    checks: dict[str, Any] = {}
    try:
        with c.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
    if settings.resolved_task_mode == "celery":
        checks["broker"] = _ping_broker(settings.broker_url or "")
    else:
        checks["broker"] = "inline"
    loaded = c.embedders.loaded()
    checks["models"] = loaded
    checks["degraded"] = _degraded(c, authorization)
    queues = {name: h.status for name, h in c.serving.health().items()}
    if queues:
        checks["queues"] = queues
    model_ok = not settings.embedder.preload or bool(loaded)
    queues_ok = all(status == "ok" for status in queues.values())
    ok = (
        checks["database"] == "ok"
        and checks["broker"] in ("ok", "inline")
        and model_ok
        and queues_ok
    )
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
    )


def _reader(c: ContainerDep, authorization: str | None) -> Grant | None:
    """The caller's grant when it holds ``read`` (or auth is off), else None. Never raises: a
    probe must report, not fail."""
    try:
        return c.keys.check(authorization, "read")
    except Exception:
        return None


def _degraded(c: ContainerDep, authorization: str | None = None) -> dict[str, str]:
    """Collections whose segments failed verification, by name (those the caller may see)."""
    if "segments" not in c.__dict__:
        return {}
    broken = c.segments.degraded()
    if not broken:
        return {}
    grant = _reader(c, authorization)
    from sqlalchemy import select

    from core.db import session_scope
    from core.models import Collection

    with session_scope(c.sessions) as s:
        names: dict[int, str] = {
            row.id: row.name
            for row in s.execute(
                select(Collection.id, Collection.name).where(Collection.id.in_(list(broken)))
            )
        }
    shown: dict[str, str] = {}
    hidden = 0
    for cid, reason in broken.items():
        name = names.get(cid, f"#{cid}")
        if grant is not None and grant.covers(names.get(cid)):
            shown[name] = reason
        else:
            hidden += 1
    if hidden:  # "*" is no collection name
        shown["*"] = f"{hidden} collection(s) degraded; a read key for them shows which"
    return shown


def _ping_broker(url: str) -> str:
    if not url.startswith(("redis://", "rediss://")):
        return "ok"  # only Redis brokers are checked
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return "ok"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    state.metrics.models_loaded.set(len(state.container.embedders.loaded()))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_router(open_metrics: bool) -> APIRouter:
    """``/metrics``, open or behind the ``read`` scope (``QUARRY_AUTH__OPEN_METRICS``)."""
    r = APIRouter(tags=["health"])
    deps = [] if open_metrics else [Depends(require("read"))]
    r.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        dependencies=deps,
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus metrics (text exposition format)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    return r
