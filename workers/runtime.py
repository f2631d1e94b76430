"""What a process that runs jobs needs: settings, database sessions, models, storage paths.

One :class:`Runtime` per process. Celery worker processes build theirs lazily after fork
(:func:`get_runtime`); the API builds one in its lifespan and shares it with the inline
executor.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_session_factory
from core.migrate import ensure_migrated
from core.settings import Settings, get_settings
from embedder import EmbedderPool

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    embedders: EmbedderPool

    @classmethod
    def create(cls, settings: Settings, *, check_schema: bool = True) -> Runtime:
        engine = make_engine(settings.resolved_database_url)
        if check_schema:
            try:
                ensure_migrated(engine)
            except Exception:
                engine.dispose()
                raise
        settings.segments_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            embedders=EmbedderPool.from_settings(settings),
        )

    @property
    def segments_root(self) -> Path:
        return self.settings.segments_dir

    def close(self) -> None:
        self.engine.dispose()


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime of a worker process, created on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.create(get_settings())
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install (or clear) the process-wide runtime; used by the inline executor and tests."""
    global _runtime
    with _lock:
        _runtime = runtime
