"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    """Readiness: database and broker reachable, default model loaded."""
    settings = state.runtime.settings
    checks: dict[str, Any] = {}
    try:
        with state.runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
    if settings.resolved_task_mode == "celery":
        checks["broker"] = _ping_broker(settings.broker_url or "")
    else:
        checks["broker"] = "inline"
    loaded = state.runtime.embedders.loaded()
    checks["models"] = loaded
    model_ok = not settings.embedder.preload or bool(loaded)
    ok = checks["database"] == "ok" and checks["broker"] in ("ok", "inline") and model_ok
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
    )


def _ping_broker(url: str) -> str:
    if not url.startswith(("redis://", "rediss://")):
        return "ok"  # only Redis brokers are checked
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
        return "ok"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


@router.get("/metrics")
def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    state.metrics.models_loaded.set(len(state.runtime.embedders.loaded()))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
