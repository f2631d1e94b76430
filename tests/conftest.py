"""Shared fixtures: databases (SQLite per test, a fresh Postgres database per session), a Redis
of the session's own, settings for the embedded mode, and a real MiniLM model loaded once."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PG_ADMIN_URL = os.environ.get("QUARRY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# A Redis the tests may flush, named in full (database number included), e.g.
# redis://127.0.0.1:6379/5. Unset: the session starts its own redis-server on a free port.
NAMED_REDIS_URL = os.environ.get("QUARRY_TEST_REDIS_URL", "")
REQUIRE_SERVICES = os.environ.get("QUARRY_REQUIRE_SERVICES") == "1"
SERVICES_HINT = "start it with scripts/services.sh"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _unavailable(what: str, exc: Exception, hint: str = SERVICES_HINT) -> None:
    msg = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if REQUIRE_SERVICES:
        pytest.fail(msg + " and QUARRY_REQUIRE_SERVICES=1")
    pytest.skip(f"{msg}; {hint}")


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


def _redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _named_redis() -> str:
    """QUARRY_TEST_REDIS_URL, checked to name a database, flushed (it was named for tests)."""
    import redis

    parts = urlsplit(NAMED_REDIS_URL)
    if parts.scheme not in ("redis", "rediss") or not parts.path.strip("/").isdigit():
        pytest.fail(
            f"QUARRY_TEST_REDIS_URL={NAMED_REDIS_URL!r} must name a database, "
            "e.g. redis://127.0.0.1:6379/5 (the tests flush it)"
        )
    try:
        client = redis.Redis.from_url(NAMED_REDIS_URL, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except Exception as exc:
        _unavailable(
            f"Redis at QUARRY_TEST_REDIS_URL={NAMED_REDIS_URL}",
            exc,
            "start it, or unset QUARRY_TEST_REDIS_URL to let the tests start their own",
        )
    return NAMED_REDIS_URL


def _start_redis(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port: no persistence, data in ``workdir``."""
    import redis

    last_log = ""
    for attempt in range(3):  # the free port can be taken between the probe and the bind
        port = _free_port()
        log_path = workdir / f"redis-{attempt}.log"
        proc = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(log_path),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        return proc, url
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        _stop(proc)
        last_log = log_path.read_text(errors="replace") if log_path.exists() else ""
    raise RuntimeError(f"redis-server did not start; its log:\n{last_log[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for this session alone: its own redis-server (stopped afterwards), or the one
    QUARRY_TEST_REDIS_URL names. Never the default Redis on 6379 by accident."""
    if os.environ.get("QUARRY_TEST_REDIS") and not NAMED_REDIS_URL:
        pytest.fail(
            "QUARRY_TEST_REDIS is no longer read: name the Redis the tests may flush, database "
            "included, with QUARRY_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/5), or unset it"
        )
    if NAMED_REDIS_URL:
        yield _named_redis()
        return
    binary = _redis_server_binary()
    if binary is None:
        msg = (
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server), "
            "so the tests cannot start their own Redis; or name one the tests may flush with "
            "QUARRY_TEST_REDIS_URL=redis://HOST:PORT/DB"
        )
        if REQUIRE_SERVICES:
            pytest.fail(msg + " (QUARRY_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    try:
        proc, url = _start_redis(binary, tmp_path_factory.mktemp("redis"))
    except Exception as exc:
        _unavailable("the tests' own redis-server", exc, "check that redis-server runs")
    try:
        yield url
    finally:
        _stop(proc)


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


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def tiny_beir() -> Path:
    """A hand-made BEIR folder (8 documents, 3 test queries with graded qrels)."""
    return FIXTURES / "tiny_beir"


@pytest.fixture
def tiny_trec() -> Path:
    """A hand-made TREC-DL reranking set (candidates JSON + qrels)."""
    return FIXTURES / "tiny_trec"
