"""Alembic: the schema goes up, down and up again; unmigrated databases are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

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
    from alembic.script import ScriptDirectory

    from core.migrate import alembic_config

    revisions = [
        r.revision
        for r in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()
    ]
    # One head (get_current_head raises on several), the newest revision, with 0004 below it.
    assert head_revision() == max(revisions)
    assert {"0003", "0004"} <= set(revisions) and head_revision() >= "0004"


def test_0004_gives_existing_collections_the_old_bm25_parameters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url, "0003")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO collections (name, embedder, dim, metric, index_spec, lexical, "
                    "manifest_version, created_at, updated_at) VALUES ('old', 'm', 4, 'cosine', "
                    "'Flat', 1, 0, '2026-12-01 00:00:00', '2026-12-01 00:00:00')"
                )
            )
        upgrade(url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT bm25_k1, bm25_b FROM collections")).one()
        assert tuple(row) == (0.9, 0.4)  # what every collection searched with before

        from core.collections import create_collection
        from core.db import make_session_factory, session_scope

        with session_scope(make_session_factory(engine)) as s:
            coll = create_collection(s, name="new", embedder="m", dim=4, bm25_k1=1.2, bm25_b=0.75)
            assert (coll.bm25_k1, coll.bm25_b) == (1.2, 0.75)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, bm25_k1, bm25_b FROM collections")).all()
        assert sorted(map(tuple, rows)) == [("new", 1.2, 0.75), ("old", 0.9, 0.4)]

        downgrade(url, "0003")
        columns = {c["name"] for c in inspect(engine).get_columns("collections")}
        assert not {"bm25_k1", "bm25_b"} & columns
        with engine.connect() as conn:
            names = conn.execute(text("SELECT name FROM collections ORDER BY name")).scalars()
            assert list(names) == ["new", "old"]  # the rows survive the downgrade
    finally:
        engine.dispose()


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
