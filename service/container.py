"""The composition root: :func:`build` wires every object a Quarry process needs, once.

Everything is built lazily on first use, so a command that needs no database (``quarry eval
rerank`` on a candidates file) or no broker never opens one; the API calls
:meth:`Container.check_database` at start-up to refuse an unmigrated schema early.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from embedder import EmbedderPool
    from indexer.cache import SegmentCache
    from ranker.text import RerankerPool
    from service.ctr import CTRRuntime
    from service.dispatch import Dispatcher
    from service.keys import KeyStore
    from service.search import Searcher
    from service.serving import Serving

logger = logging.getLogger(__name__)

T = TypeVar("T")


class cached_property(Generic[T]):
    """Built once per container under its lock: request threads may race for first use."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self._fn = fn
        self._name = fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> cached_property[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> T | cached_property[T]:
        if obj is None:
            return self
        with obj._lock:  # type: ignore[attr-defined]
            cache = obj.__dict__
            if self._name not in cache:
                cache[self._name] = self._fn(obj)
            return cache[self._name]


class Container:
    """The objects of one process, each built on first access and shared afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._closed = False

    @cached_property
    def engine(self) -> Engine:
        from core.db import make_engine

        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        from core.db import make_session_factory

        return make_session_factory(self.engine)

    @cached_property
    def read_sessions(self) -> sessionmaker[Session]:
        """Sessions for read-only paths (search); see :func:`core.db.make_read_session_factory`."""
        from core.db import make_read_session_factory

        return make_read_session_factory(self.engine)

    @cached_property
    def embedders(self) -> EmbedderPool:
        from embedder import EmbedderPool

        return EmbedderPool.from_settings(self.settings)

    @cached_property
    def rerankers(self) -> RerankerPool:
        from ranker.text import RerankerPool

        return RerankerPool.from_settings(self.settings)

    @cached_property
    def serving(self) -> Serving:
        """The online model queues (request batching and backpressure)."""
        from service.serving import Serving

        return Serving(self.settings.serving, self.embedders, self.rerankers)

    @cached_property
    def ctr(self) -> CTRRuntime:
        """CTR serving: the behaviour-state store (Redis, or in-process when embedded) and
        the loaded models."""
        from service.ctr import CTRRuntime

        return CTRRuntime(self)

    @cached_property
    def segments(self) -> SegmentCache:
        """Loaded segments, on the GPU when ``index.use_gpu`` and one is present."""
        from indexer.cache import SegmentCache

        self.segments_root.mkdir(parents=True, exist_ok=True)
        return SegmentCache(self.segments_root, use_gpu=self.settings.index.use_gpu)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        from service.dispatch import make_dispatcher

        return make_dispatcher(self)

    @cached_property
    def keys(self) -> KeyStore:
        from service.keys import KeyStore

        return KeyStore(self.settings, self.sessions)

    @cached_property
    def searcher(self) -> Searcher:
        from service.search import Searcher

        return Searcher(self.read_sessions, self.serving, self.segments)

    @property
    def segments_root(self) -> Path:
        return self.settings.segments_dir

    def check_database(self) -> None:
        """Raise :class:`~core.errors.DatabaseNotMigrated` (with instructions) unless the schema
        is at the latest revision."""
        from core.migrate import ensure_migrated

        ensure_migrated(self.engine)
        self.segments_root.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Stop the dispatcher and release database connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if "dispatcher" in self.__dict__:
            self.dispatcher.close()
        if "ctr" in self.__dict__:
            self.ctr.close()
        if "serving" in self.__dict__:
            self.serving.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def build(settings: Settings | None = None, *, check_schema: bool = True) -> Container:
    """The composition root. With ``check_schema`` the database must be migrated already."""
    from core.settings import get_settings

    container = Container(settings or get_settings())
    if check_schema:
        try:
            container.check_database()
        except Exception:
            container.close()
            raise
    return container
