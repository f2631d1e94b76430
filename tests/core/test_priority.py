"""The forward lock: online callers go before bulk ones, bulk work still moves, and bulk
passes on a CPU are kept short."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core.priority import BULK_CPU_BATCH_TOKENS, ForwardLock, batch_budget, bulk_work, in_bulk_work


def _wait_until(condition: object, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.002)


def _taker(lock: ForwardLock, order: list[str], name: str, bulk: bool) -> threading.Thread:
    def run() -> None:
        if bulk:
            with bulk_work(), lock:
                order.append(name)
        else:
            with lock:
                order.append(name)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_online_callers_go_before_a_bulk_caller_that_waited_first() -> None:
    lock = ForwardLock(max_bulk_wait_s=10.0)
    order: list[str] = []
    lock.acquire()  # an online pass in progress
    bulk = _taker(lock, order, "bulk", bulk=True)
    _wait_until(lambda: len(lock._bulk_waiting) == 1)
    online = [_taker(lock, order, f"online-{i}", bulk=False) for i in range(3)]
    _wait_until(lambda: lock._online_waiting == 3)
    lock.release()
    for t in [bulk, *online]:
        t.join(5)
    assert order[-1] == "bulk" and sorted(order[:3]) == ["online-0", "online-1", "online-2"]


def test_a_plain_lock_order_without_bulk_work_is_first_come() -> None:
    lock = ForwardLock()
    with lock:
        pass
    with bulk_work():
        assert in_bulk_work()
        with lock:  # nobody else waits: a bulk caller takes a free lock at once
            pass
    assert not in_bulk_work()
    with pytest.raises(RuntimeError):
        lock.release()


def test_bulk_work_is_not_starved_by_a_steady_stream_of_queries() -> None:
    lock = ForwardLock(max_bulk_wait_s=0.05)
    stop = threading.Event()
    online_passes = 0

    def query_stream() -> None:
        nonlocal online_passes
        while not stop.is_set():
            with lock:
                online_passes += 1
                time.sleep(0.002)

    streams = [threading.Thread(target=query_stream) for _ in range(4)]
    for t in streams:
        t.start()
    try:
        _wait_until(lambda: online_passes > 20)
        waits = []
        for _ in range(5):
            t0 = time.monotonic()
            with bulk_work(), lock:
                waits.append(time.monotonic() - t0)
                time.sleep(0.002)
        # Due after 50 ms, it goes right after the pass in progress (2 ms) - never starved.
        assert max(waits) < 0.5, waits
        # ...but, as a rule, only after the waiting queries had their turn (a bulk caller
        # that finds the lock free with nobody waiting takes it at once).
        assert sorted(waits)[2] >= 0.04, waits
    finally:
        stop.set()
        for t in streams:
            t.join(5)


def test_bulk_passes_on_a_cpu_use_a_smaller_token_budget() -> None:
    assert batch_budget(16_384, "cpu") == 16_384
    with bulk_work():
        assert batch_budget(16_384, "cpu") == BULK_CPU_BATCH_TOKENS
        assert batch_budget(1_000, "cpu") == 1_000
        assert batch_budget(16_384, "cuda:0") == 16_384


def test_bulk_embeddings_equal_online_ones(minilm) -> None:
    texts = [
        f"document {i} about heat transfer in boundary layers " * (1 + i % 7) for i in range(40)
    ]
    online = minilm.embed(texts, kind="document")
    with bulk_work():
        bulk = minilm.embed(texts, kind="document")
    np.testing.assert_allclose(bulk, online, atol=1e-5)


def test_online_callers_are_served_in_arrival_order() -> None:
    lock = ForwardLock()
    order: list[str] = []
    lock.acquire()
    waiting = []
    for i in range(8):
        waiting.append(_taker(lock, order, f"online-{i}", bulk=False))
        _wait_until(lambda n=i + 1: lock._online_waiting == n)
    lock.release()
    for t in waiting:
        t.join(5)
    assert order == [f"online-{i}" for i in range(8)]
