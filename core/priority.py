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
from collections import deque
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


class _Waiter:
    __slots__ = ("gate", "since")

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.gate.acquire()  # released by whoever hands the lock over
        self.since = time.monotonic()


class ForwardLock:
    """A non-reentrant lock that serves online callers before bulk ones, each class in
    arrival order; see the module doc.

    A release hands the lock straight to the next caller (only that one wakes: with dozens
    of request threads waiting on one model, waking all of them per pass would cost more
    than the pass on a small CPU). The lock is free only when nobody waits.
    """

    def __init__(self, max_bulk_wait_s: float = 0.5) -> None:
        self.max_bulk_wait_s = max_bulk_wait_s
        self._mutex = threading.Lock()
        self._held = False
        self._online: deque[_Waiter] = deque()
        self._bulk: deque[_Waiter] = deque()

    @property
    def _online_waiting(self) -> int:
        return len(self._online)

    @property
    def _bulk_waiting(self) -> deque[_Waiter]:
        return self._bulk

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            waiter = _Waiter()
            (self._bulk if _BULK.get() else self._online).append(waiter)
        waiter.gate.acquire()  # the lock is ours once a release hands it over

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unlocked ForwardLock")
            bulk_due = bool(self._bulk) and (
                not self._online or time.monotonic() - self._bulk[0].since >= self.max_bulk_wait_s
            )
            queue = self._bulk if bulk_due else self._online
            if not queue:
                self._held = False
                return
            queue.popleft().gate.release()  # still held: now by that caller

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
