"""Alembic: the schema goes up, down and up again; unmigrated databases are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from core.db import make_engine
from core.errors import DatabaseNotMigrated
from core.migrate import downgrade, ensure_migrated, head_revision, upgrade

TABLES = {"collections", "documents", "segments", "jobs", "api_keys", "alembic_version"}


def _roundtrip(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        ensure_migrated(engine)
        downgrade(url, "base")
        assert not (TABLES - {"alembic_version"}) & set(inspect(engine).get_table_names())
        with pytest.raises(DatabaseNotMigrated, match="quarry db upgrade"):
            ensure_migrated(engine)
        upgrade(url)
        assert set(inspect(engine).get_table_names()) >= TABLES
        ensure_migrated(engine)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'q.db'}")


@pytest.mark.services
def test_upgrade_downgrade_upgrade_postgres(pg_url: str) -> None:
    _roundtrip(pg_url)
    downgrade(pg_url, "base")  # leave the shared session database empty for others
    upgrade(pg_url)


def test_head_is_single() -> None:
    assert head_revision() == "0003"


def test_api_refuses_unmigrated_database(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from core.settings import Settings

    settings = Settings(data_dir=tmp_path)
    with pytest.raises(DatabaseNotMigrated, match="Run `quarry db upgrade` first"):  # noqa: SIM117
        with TestClient(create_app(settings)):
            pass


def test_worker_refuses_unmigrated_database(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp_path),
        "QUARRY_BROKER_URL": "redis://127.0.0.1:6379/12",
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "database_not_migrated" in out.stderr and "quarry db upgrade" in out.stderr
