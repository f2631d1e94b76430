"""Online work goes before bulk work on a model both share.

A model's forward passes are serialised by a lock. When an ingest job runs in the same
process as the API (the embedded default, or a worker that also answers queries), its
batches and the queries' batches take turns on that lock, and a plain lock lets the job
take it back again and again while queries wait. :class:`ForwardLock` orders the turns:

- a caller inside :func:`bulk_work` (the ingest job) waits while any online caller waits;
- so that the job still moves under a steady stream of queries, a bulk caller that has
  waited ``max_bulk_wait_s`` goes next (online callers then wait for that one pass).

Which work is bulk is a property of the calling context (a :class:`~contextvars.ContextVar`),
not of the model, so embedders keep one ``embed`` method: the job wraps its calls in
``with bulk_work():``. :func:`in_bulk_work` lets an embedder choose smaller batches there,
which bounds how long one bulk pass holds the model (see ``BULK_CPU_BATCH_TOKENS``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType

#: Token budget of one bulk forward pass on a CPU while online work shares the model: about
#: a third of a second for MiniLM-L6 on two cores, the most a query waits behind the job.
BULK_CPU_BATCH_TOKENS = 2048

_BULK: ContextVar[bool] = ContextVar("quarry_bulk_work", default=False)


@contextmanager
def bulk_work() -> Iterator[None]:
    """Mark the model calls made inside as bulk work (lower priority than online calls)."""
    token = _BULK.set(True)
    try:
        yield
    finally:
        _BULK.reset(token)


def in_bulk_work() -> bool:
    """Whether the current context is inside :func:`bulk_work`."""
    return _BULK.get()


class ForwardLock:
    """A non-reentrant lock that serves online callers before bulk ones; see the module doc."""

    def __init__(self, max_bulk_wait_s: float = 0.5) -> None:
        self.max_bulk_wait_s = max_bulk_wait_s
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._online_waiting = 0
        # Start times of the bulk callers waiting now (their own entries, removed on entry).
        self._bulk_waiting: list[float] = []

    def _bulk_due_in(self, now: float) -> float | None:
        """Seconds until the longest-waiting bulk caller is due (<= 0: due now); None: none."""
        if not self._bulk_waiting:
            return None
        return min(self._bulk_waiting) + self.max_bulk_wait_s - now

    def acquire(self) -> None:
        with self._cond:
            if _BULK.get():
                self._acquire_bulk()
            else:
                self._acquire_online()
            self._held = True

    def _acquire_online(self) -> None:
        self._online_waiting += 1
        try:
            while True:
                due = self._bulk_due_in(time.monotonic())
                bulk_turn = due is not None and due <= 0
                if not self._held and not bulk_turn:
                    return
                self._cond.wait()
        finally:
            self._online_waiting -= 1

    def _acquire_bulk(self) -> None:
        mark = time.monotonic()
        self._bulk_waiting.append(mark)
        try:
            while True:
                waited = time.monotonic() - mark
                due = waited >= self.max_bulk_wait_s
                if not self._held and (self._online_waiting == 0 or due):
                    return
                # Held: sleep until released. Free with online callers waiting: one of them
                # takes it; look again when this caller falls due.
                self._cond.wait(None if self._held else max(self.max_bulk_wait_s - waited, 1e-3))
        finally:
            self._bulk_waiting.remove(mark)

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked ForwardLock")
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> ForwardLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def batch_budget(batch_tokens: int, device: str) -> int:
    """The token budget of one forward pass: ``batch_tokens``, capped at
    :data:`BULK_CPU_BATCH_TOKENS` for bulk work on a CPU (so a query waits at most one short
    pass behind an ingest job; on a GPU a full pass takes milliseconds anyway)."""
    if in_bulk_work() and device == "cpu":
        return min(batch_tokens, BULK_CPU_BATCH_TOKENS)
    return batch_tokens
