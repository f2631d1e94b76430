"""SQLite sessions: writers take the write lock up front, read-only sessions take none."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import make_engine, make_read_session_factory, make_session_factory, session_scope


@pytest.fixture
def factories(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    writes, reads = make_session_factory(engine), make_read_session_factory(engine)
    with session_scope(writes) as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    yield writes, reads
    engine.dispose()


def _hold_write_lock(writes, held: threading.Event, release: threading.Event) -> None:
    with session_scope(writes) as s:
        s.execute(text("INSERT INTO t VALUES (2)"))
        held.set()
        release.wait(5)


def _seconds_to_count(factory) -> tuple[int, float]:
    t0 = time.perf_counter()
    with session_scope(factory) as s:
        n = int(s.execute(text("SELECT count(*) FROM t")).scalar_one())
    return n, time.perf_counter() - t0


def test_a_read_session_reads_a_snapshot_beside_a_writer(factories) -> None:
    writes, reads = factories
    held, release = threading.Event(), threading.Event()
    writer = threading.Thread(target=_hold_write_lock, args=(writes, held, release))
    writer.start()
    try:
        assert held.wait(5)
        n, seconds = _seconds_to_count(reads)
        assert n == 1  # the writer's row is not committed yet
        assert seconds < 0.5  # no wait for the write lock
    finally:
        release.set()
        writer.join(5)
    assert _seconds_to_count(reads)[0] == 2


def test_a_write_session_waits_for_the_writer_ahead_of_it(factories) -> None:
    writes, _ = factories
    held, release = threading.Event(), threading.Event()
    writer = threading.Thread(target=_hold_write_lock, args=(writes, held, release))
    writer.start()
    try:
        assert held.wait(5)
        threading.Timer(0.3, release.set).start()
        n, seconds = _seconds_to_count(writes)
        assert seconds >= 0.25 and n == 2  # it began only after the writer committed
    finally:
        release.set()
        writer.join(5)
