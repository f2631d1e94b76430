"""Schema migrations (Alembic) driven from code: upgrade, downgrade and the start-up check."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from core.db import make_engine, normalise_url
from core.errors import DatabaseNotMigrated

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    logger.info("Upgrading database schema to %s", revision)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    logger.info("Downgrading database schema to %s", revision)
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_migrated(engine: Engine) -> None:
    """Raise :class:`DatabaseNotMigrated` unless the schema is at the latest revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"The database at {engine.url.render_as_string(hide_password=True)} is at schema "
            f"revision {current or 'none (empty database)'} but this Quarry needs {head}. "
            "Run `quarry db upgrade` first."
        )


def is_migrated(url: str) -> bool:
    engine = make_engine(url)
    try:
        ensure_migrated(engine)
        return True
    except DatabaseNotMigrated:
        return False
    finally:
        engine.dispose()
