"""Shared fixtures: databases (SQLite per test, a fresh Postgres database per session), Redis,
settings for the embedded mode, and a real MiniLM model loaded once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("QUARRY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("QUARRY_TEST_REDIS", "redis://127.0.0.1:6379")
REQUIRE_SERVICES = os.environ.get("QUARRY_REQUIRE_SERVICES") == "1"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if REQUIRE_SERVICES:
        pytest.fail(msg + " and QUARRY_REQUIRE_SERVICES=1")
    pytest.skip(msg + "; start it with scripts/services.sh")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from core.db import normalise_url

    name = f"quarry_test_{uuid.uuid4().hex[:10]}"
    admin_url = normalise_url(PG_ADMIN_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _unavailable("Postgres", exc)
    base = admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database number of its own, flushed at the start."""
    import redis

    url = f"{REDIS_URL}/11"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except Exception as exc:
        _unavailable("Redis", exc)
    return url


@pytest.fixture
def sqlite_settings(tmp_path: Path):
    """Embedded-mode settings in a temporary data dir, schema migrated."""
    from core.migrate import upgrade
    from core.settings import Settings

    settings = Settings(data_dir=tmp_path / "quarry", env="test")
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 embedder, loaded once per session."""
    from embedder import load_embedder

    return load_embedder("all-MiniLM-L6-v2", device="cpu")
