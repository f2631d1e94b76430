"""A request batcher: concurrent calls are queued, merged into batches and answered one by one.

One :class:`Batcher` serves one model. Callers :meth:`~Batcher.submit` an item (from a thread
or, with :meth:`~Batcher.acall`, from the event loop without blocking it); worker threads take
batches off the queue and hand them to ``run``, which returns one result (or exception) per
item. A batch closes when its cost budget is full, when no batch is running (an idle model
never waits for company), or when its oldest item has waited ``max_wait_s``. With two
workers, one batch's preparation (tokenisation, padding) overlaps the previous one's forward
pass, which the model serialises itself.

Backpressure: the queue is bounded by items and by cost; a submit that would exceed either is
refused at once with :class:`Overloaded` (HTTP 503 + ``Retry-After``), and an item not answered
within its deadline fails with :class:`DeadlineExceeded`. If ``run`` raises for a whole batch,
each item of a multi-item batch is run alone, so one bad input fails only its own request.

:meth:`~Batcher.health` reports a wedged batcher (work waiting, no batch completed within the
deadline) and a recent out-of-memory error, until a later batch completes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - the conventional name of an input type
O = TypeVar("O")  # noqa: E741


class Overloaded(ServiceUnavailable):
    """The model's queue is full; the client should retry after ``retry_after_s``."""

    code = "overloaded"


class DeadlineExceeded(ServiceUnavailable):
    """The request waited longer than its deadline; the client may retry later."""

    code = "deadline_exceeded"


class BatchObserver(Protocol):
    """What a batcher reports (Prometheus metrics implement it in the API)."""

    def queue_depth(self, name: str, items: int, cost: int) -> None: ...

    def batch_done(self, name: str, items: int, cost: int, seconds: float) -> None: ...

    def waited(self, name: str, seconds: float) -> None: ...

    def rejected(self, name: str, reason: str) -> None: ...


@dataclass(frozen=True)
class BatcherLimits:
    """Every limit of a batcher; see :class:`core.settings.ServingSettings` for the defaults."""

    max_batch_cost: int = 16_384
    max_batch_items: int = 256
    max_wait_s: float = 0.005
    max_queue_items: int = 1024
    max_queue_cost: int = 262_144
    timeout_s: float = 10.0
    retry_after_s: float = 1.0
    workers: int = 2


@dataclass(frozen=True)
class BatcherHealth:
    ok: bool
    #: ``ok``, ``wedged`` or ``out_of_memory``.
    status: str
    queued: int
    running: int


@dataclass
class _Pending(Generic[I, O]):
    item: I
    cost: int
    enqueued: float
    deadline: float
    future: Future[O] = field(default_factory=Future)


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class Batcher(Generic[I, O]):
    """Queue + worker threads for one model; see the module docstring."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[I]], Sequence[O | BaseException]],
        *,
        cost: Callable[[I], int],
        limits: BatcherLimits | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.limits = limits or BatcherLimits()
        self._run = run
        self._cost = cost
        self._observer = observer
        self._queue: deque[_Pending[I, O]] = deque()
        self._queued_cost = 0
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        # Time of the last sign of life: a batch completed, or work arrived at an idle batcher.
        self._progress = time.monotonic()
        self._oom = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(max(1, self.limits.workers))
        ]
        for t in self._threads:
            t.start()

    # ----------------------------------------------------------------------------- callers

    def submit(self, item: I, *, timeout_s: float | None = None) -> Future[O]:
        """Queue ``item``; raise :class:`Overloaded` at once when the queue is full."""
        lim = self.limits
        cost = max(1, int(self._cost(item)))
        now = time.monotonic()
        pending: _Pending[I, O] = _Pending(
            item, cost, now, now + (lim.timeout_s if timeout_s is None else timeout_s)
        )
        with self._cond:
            if self._closed:
                raise ServiceUnavailable(f"Model {self.name!r} is shutting down")
            full = len(self._queue) >= lim.max_queue_items or (
                self._queue and self._queued_cost + cost > lim.max_queue_cost
            )
            if full:
                self._notify_rejected("queue_full")
                raise Overloaded(
                    f"Model {self.name!r} is busy ({len(self._queue)} requests queued); "
                    f"retry after {lim.retry_after_s:g} s",
                    details={"model": self.name, "retry_after_s": lim.retry_after_s},
                )
            if not self._queue and not self._running:
                self._progress = now
            self._queue.append(pending)
            self._queued_cost += cost
            depth, queued_cost = len(self._queue), self._queued_cost
            self._cond.notify()
        self._notify_depth(depth, queued_cost)
        return pending.future

    def call(self, item: I, *, timeout_s: float | None = None) -> O:
        """Submit ``item`` and wait for its result (from a thread, never the event loop).

        When the batcher is idle (nothing queued or running) the item runs at once on the
        calling thread, saving two thread hand-offs; requests arriving meanwhile queue up
        for the workers as usual.
        """
        wait = self.limits.timeout_s if timeout_s is None else timeout_s
        inline = self._claim_idle(item, wait)
        if inline is not None:
            self._execute([inline])
            return inline.future.result()
        future = self.submit(item, timeout_s=wait)
        try:
            return future.result(timeout=wait)
        except (FutureTimeout, CancelledError):
            future.cancel()
            raise self._deadline_error(wait) from None

    def _claim_idle(self, item: I, wait: float) -> _Pending[I, O] | None:
        """A pending entry marked running when the batcher is idle, else None."""
        with self._cond:
            if self._closed or self._queue or self._running:
                return None
            now = time.monotonic()
            self._running += 1
            self._progress = now
        pending: _Pending[I, O] = _Pending(item, max(1, int(self._cost(item))), now, now + wait)
        pending.future.set_running_or_notify_cancel()
        return pending

    async def acall(self, item: I, *, timeout_s: float | None = None) -> O:
        """Submit ``item`` and await its result without blocking the event loop."""
        wait = self.limits.timeout_s if timeout_s is None else timeout_s
        future = self.submit(item, timeout_s=wait)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=wait)
        except (TimeoutError, asyncio.CancelledError, CancelledError) as exc:
            future.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise  # the client went away: nothing to answer
            raise self._deadline_error(wait) from None

    def health(self) -> BatcherHealth:
        """``wedged`` when work waits and no batch completed within the deadline;
        ``out_of_memory`` after an OOM until a batch completes again."""
        with self._cond:
            busy = bool(self._queue) or self._running > 0
            stalled = busy and time.monotonic() - self._progress > self.limits.timeout_s
            status = "wedged" if stalled else "out_of_memory" if self._oom else "ok"
            return BatcherHealth(status == "ok", status, len(self._queue), self._running)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the workers; queued items fail with :class:`ServiceUnavailable`."""
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_cost = 0
            self._cond.notify_all()
        for p in left:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(ServiceUnavailable(f"Model {self.name!r} shut down"))
        for t in self._threads:
            t.join(timeout_s)

    # ----------------------------------------------------------------------------- workers

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch)

    def _next_batch(self) -> list[_Pending[I, O]] | None:
        """The next batch (``[]`` when all it held had expired), or None once closed."""
        lim = self.limits
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # Wait for company only while another batch keeps the model busy.
            while (
                self._running > 0
                and self._queued_cost < lim.max_batch_cost
                and len(self._queue) < lim.max_batch_items
                and not self._closed
            ):
                left = self._queue[0].enqueued + lim.max_wait_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                if not self._queue:
                    return []
            batch: list[_Pending[I, O]] = []
            cost = 0
            now = time.monotonic()
            expired: list[_Pending[I, O]] = []
            while self._queue and len(batch) < lim.max_batch_items:
                head = self._queue[0]
                if batch and cost + head.cost > lim.max_batch_cost:
                    break
                self._queue.popleft()
                self._queued_cost -= head.cost
                if head.deadline <= now:
                    expired.append(head)
                elif head.future.set_running_or_notify_cancel():
                    batch.append(head)
                    cost += head.cost
            if batch:
                self._running += 1
            depth, queued_cost = len(self._queue), self._queued_cost
        for p in expired:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(self._deadline_error(p.deadline - p.enqueued))
        self._notify_depth(depth, queued_cost)
        if self._observer is not None:
            for p in batch:
                self._observer.waited(self.name, now - p.enqueued)
        return batch

    def _execute(self, batch: list[_Pending[I, O]]) -> None:
        t0 = time.monotonic()
        oom = self._oom
        try:
            results = self._results(batch)
            oom = any(isinstance(r, BaseException) and _is_oom(r) for r in results)
            for p, r in zip(batch, results, strict=True):
                if isinstance(r, BaseException):
                    p.future.set_exception(r)
                else:
                    p.future.set_result(r)
        finally:
            with self._cond:
                self._running -= 1
                self._progress = time.monotonic()
                self._oom = oom
                self._cond.notify_all()
        if self._observer is not None:
            self._observer.batch_done(
                self.name, len(batch), sum(p.cost for p in batch), time.monotonic() - t0
            )

    def _results(self, batch: list[_Pending[I, O]]) -> list[O | BaseException]:
        items = [p.item for p in batch]
        try:
            out = list(self._run(items))
            if len(out) != len(items):
                raise RuntimeError(f"run returned {len(out)} results for {len(items)} items")
            return out
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            logger.warning(
                "batch of %d on %s failed (%s); running its items one by one",
                len(items),
                self.name,
                type(exc).__name__,
            )
        results: list[O | BaseException] = []
        for item in items:
            try:
                results.extend(self._run([item]))
            except Exception as exc:  # this item's own failure, reported to its caller only
                results.append(exc)
        return results

    # ----------------------------------------------------------------------------- helpers

    def _deadline_error(self, waited_s: float) -> DeadlineExceeded:
        self._notify_rejected("deadline")
        return DeadlineExceeded(
            f"Model {self.name!r} did not answer within {waited_s:g} s; retry after "
            f"{self.limits.retry_after_s:g} s",
            details={"model": self.name, "retry_after_s": self.limits.retry_after_s},
        )

    def _notify_depth(self, items: int, cost: int) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.name, items, cost)

    def _notify_rejected(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(self.name, reason)
