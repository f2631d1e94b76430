"""The request batcher: routing under concurrency, merging, isolation, backpressure, health."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.batcher import Batcher, BatcherLimits, DeadlineExceeded, Overloaded


class Recorder:
    """A ``run`` that doubles numbers, records batch sizes and can be held or made to fail."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.gate.wait()
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay_s)
        if any(i < 0 for i in items):
            raise ValueError("negative input")
        return [2 * i for i in items]


def make(run: Recorder, **limits: float) -> Batcher[int, int]:
    return Batcher("test", run, cost=lambda i: 1, limits=BatcherLimits(**limits))  # type: ignore[arg-type]


def test_results_reach_their_own_callers_under_concurrency() -> None:
    run = Recorder(delay_s=0.01)
    b = make(run, max_wait_s=0.005)
    try:
        with ThreadPoolExecutor(64) as pool:
            got = list(pool.map(b.call, range(500)))
        assert got == [2 * i for i in range(500)]
        # Concurrent callers were merged: far fewer batches than requests.
        assert len(run.batches) < 250
        assert max(len(x) for x in run.batches) > 1
        assert sorted(i for batch in run.batches for i in batch) == list(range(500))
    finally:
        b.close()


def test_async_callers_are_batched_without_blocking_the_loop() -> None:
    run = Recorder(delay_s=0.02)
    b = make(run)

    async def main() -> list[int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        got = await asyncio.gather(*(b.acall(i) for i in range(200)))
        t.cancel()
        assert ticks > 3  # the loop kept running while batches ran on the worker threads
        return list(got)

    try:
        assert asyncio.run(main()) == [2 * i for i in range(200)]
        assert len(run.batches) < 100
    finally:
        b.close()


def test_one_bad_input_fails_only_its_own_request() -> None:
    run = Recorder(delay_s=0.02)
    b = make(run, max_wait_s=0.05)
    try:
        run.gate.clear()  # hold the first batch so the others queue up together
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(b.call, i) for i in [1, 2, -3, 4, 5, 6, 7, 8]]
            time.sleep(0.1)
            run.gate.set()
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result(timeout=10))
                except ValueError as exc:
                    outcomes.append(str(exc))
        assert outcomes == [2, 4, "negative input", 8, 10, 12, 14, 16]
        assert any(len(batch) > 1 and -3 in batch for batch in run.batches)
    finally:
        b.close()


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    run = Recorder()
    run.gate.clear()
    b = make(run, max_queue_items=4, workers=1, retry_after_s=2.0)
    try:
        first = b.submit(0)  # taken by the worker, held at the gate
        time.sleep(0.05)
        queued = [b.submit(i) for i in range(1, 5)]
        t0 = time.monotonic()
        with pytest.raises(Overloaded) as err:
            b.submit(99)
        assert time.monotonic() - t0 < 0.1
        assert err.value.status == 503 and err.value.code == "overloaded"
        assert err.value.details["retry_after_s"] == 2.0
        run.gate.set()
        assert [f.result(timeout=5) for f in [first, *queued]] == [0, 2, 4, 6, 8]
    finally:
        b.close()


def test_a_queue_bounded_by_cost_refuses_what_would_overflow_it() -> None:
    run = Recorder()
    run.gate.clear()
    b = Batcher("cost", run, cost=lambda i: i, limits=BatcherLimits(max_queue_cost=10, workers=1))
    try:
        b.submit(1)
        time.sleep(0.05)  # the worker holds it
        b.submit(6)
        with pytest.raises(Overloaded):
            b.submit(5)  # 6 + 5 > 10
        b.submit(4)
    finally:
        run.gate.set()
        b.close()


def test_requests_past_their_deadline_fail_and_are_never_run() -> None:
    run = Recorder()
    run.gate.clear()
    b = make(run, timeout_s=0.3, workers=1)
    try:
        with ThreadPoolExecutor(4) as pool:
            # An idle batcher runs the first call on the caller's thread (held at the gate)...
            first = pool.submit(b.call, 0, timeout_s=5)
            _wait_for(lambda: b.health().running == 1)
            # ...and the one worker takes the next item and is held too.
            second = b.submit(1, timeout_s=5)
            _wait_for(lambda: b.health().running == 2 and b.health().queued == 0)
            late = [pool.submit(b.call, i) for i in (2, 3, 4)]
            for f in late:
                with pytest.raises(DeadlineExceeded) as err:
                    f.result(timeout=5)
                assert err.value.status == 503
            run.gate.set()
            assert first.result(timeout=5) == 0
            assert second.result(timeout=5) == 2
        time.sleep(0.1)
        ran = sorted(i for batch in run.batches for i in batch)
        assert ran == [0, 1]  # only what was running before the deadline, never 2, 3 or 4
    finally:
        run.gate.set()
        b.close()


def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_health_reports_a_wedged_batcher_and_recovers_when_it_drains() -> None:
    run = Recorder()
    run.gate.clear()
    b = make(run, timeout_s=0.3, workers=1)
    try:
        assert b.health().ok
        f = b.submit(1, timeout_s=5)
        b.submit(2, timeout_s=5)
        time.sleep(0.5)
        h = b.health()
        assert not h.ok and h.status == "wedged" and h.running == 1
        run.gate.set()
        assert f.result(timeout=5) == 2
        time.sleep(0.1)
        assert b.health().ok
    finally:
        b.close()


def test_out_of_memory_makes_it_unhealthy_until_a_batch_succeeds() -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    fail = threading.Event()
    fail.set()

    def run(items: list[int]) -> list[int]:
        if fail.is_set():
            raise OutOfMemoryError("CUDA out of memory")
        return items

    b: Batcher[int, int] = Batcher("oom", run, cost=lambda i: 1)
    try:
        with pytest.raises(OutOfMemoryError):
            b.call(1)
        assert b.health().status == "out_of_memory"
        fail.clear()
        assert b.call(2) == 2
        assert b.health().ok
    finally:
        b.close()


def test_an_idle_batcher_does_not_wait_for_company() -> None:
    run = Recorder()
    b = make(run, max_wait_s=1.0)
    try:
        t0 = time.monotonic()
        assert b.call(21) == 42
        assert time.monotonic() - t0 < 0.5
    finally:
        b.close()


def test_close_fails_what_is_still_queued() -> None:
    run = Recorder()
    run.gate.clear()
    b = make(run, workers=1)
    b.submit(1)
    time.sleep(0.05)
    waiting = b.submit(2)
    threading.Timer(0.1, run.gate.set).start()
    b.close()
    with pytest.raises(Exception, match="shut down"):
        waiting.result(timeout=1)


def test_an_idle_blocking_call_runs_on_the_callers_thread() -> None:
    threads: list[str] = []

    def run(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return items

    b: Batcher[int, int] = Batcher("inline", run, cost=lambda i: 1)
    try:
        assert b.call(5) == 5
        assert threads == [threading.current_thread().name]
        assert b.health().ok and b.health().running == 0
    finally:
        b.close()
