"""bench/http_load.py's closed loop, for about 2 s each: against a stub server in a thread
(status counting, the in-flight bound, the window) and against a real ``quarry serve``
started the way the benchmark starts it. Loopback only, bounded in time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from procs import free_port

from bench.http_load import (
    Endpoint,
    Load,
    aggregate,
    goals,
    percentile,
    quarry_embed,
    quarry_server,
    run_level,
    spread,
)
from bench.ingest_load import overlap_s

TEXTS = ["heat transfer in hypersonic flow", "boundary layer transition", "wing flutter"]


@dataclass
class Stub:
    """A server whose every fourth request is refused with 503; it records concurrency."""

    base_url: str
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


def _stub_app(stub: Stub) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/embed")
    async def embed() -> JSONResponse:
        stub.requests += 1
        n = stub.requests
        stub.in_flight += 1
        stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            stub.in_flight -= 1
        if n % 4 == 0:
            return JSONResponse({"error": {"code": "overloaded"}}, status_code=503)
        return JSONResponse({"embeddings": [[0.0]]})

    return app


@pytest.fixture
def stub() -> Iterator[Stub]:
    port = free_port()
    stub = Stub(base_url=f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        _stub_app(stub), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.02)
    yield stub
    server.should_exit = True
    thread.join(timeout=10)


def test_closed_loop_counts_statuses_within_the_window(stub: Stub) -> None:
    endpoint = Endpoint("embed", "/v1/embed", lambda t: {"inputs": [t]})
    stats = run_level(stub.base_url, endpoint, TEXTS, Load(clients=4, duration_s=1.5, warmup_s=0.3))
    s = stats.summary()
    assert stub.max_in_flight <= 4  # closed loop: one request in flight per client
    assert s["status"]["other"] == 0
    assert s["status"]["200"] > 20 and s["status"]["503"] > 5
    # about one in four refused; the warm-up's responses are not counted
    assert 0.15 < s["status"]["503"] / (s["status"]["200"] + s["status"]["503"]) < 0.35
    assert sum(s["status"].values()) < stub.requests
    assert s["qps"] == pytest.approx(s["status"]["200"] / 1.5)
    assert 0 < s["p50_ms"] <= s["p99_ms"] < 1000
    assert s["client_cpu_cores"] >= 0


def test_transport_errors_count_as_other() -> None:
    endpoint = Endpoint("embed", "/v1/embed", lambda t: {"inputs": [t]})
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    s = run_level(base, endpoint, TEXTS, Load(clients=2, duration_s=0.3)).summary()
    assert s["status"]["200"] == 0 and s["status"]["other"] > 0
    assert all(code.startswith("error:") for code in s["other_detail"])
    assert s["p50_ms"] is None


def test_percentile_spread_and_goals() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None
    assert spread([10.0, 12.0, 11.0]) == {
        "median": 11.0,
        "min": 10.0,
        "max": 12.0,
        "spread_pct": pytest.approx(100 * 2 / 11),
    }

    def level(qps: float, p99: float) -> dict[str, object]:
        return {
            "qps": qps,
            "p50_ms": 1.0,
            "p99_ms": p99,
            "status": {"200": 1, "503": 0, "other": 0},
            "client_cpu_cores": 0.1,
            "server_cpu_cores": 1.0,
        }

    rounds = [
        {
            "quarry-off": {"embed": {"64": level(100, 900)}, "search": {"64": level(80, 900)}},
            "quarry-batch": {"embed": {"64": level(250, 300)}, "search": {"64": level(150, 900)}},
            "infinity": {"embed": {"64": level(200, 400)}},
        }
    ]
    results = aggregate(rounds)
    assert results["quarry-batch"]["embed"]["64"]["qps"]["median"] == 250
    met = [g["met"] for g in goals(results)]
    assert met == [True, False, True, True]


def test_overlap_of_job_runs_with_the_window() -> None:
    window = (10.0, 20.0)
    assert overlap_s([(0.0, 12.0), (11.0, 15.0), (18.0, float("inf"))], window) == 7.0
    assert overlap_s([(0.0, 30.0)], window) == 10.0
    assert overlap_s([(21.0, 25.0)], window) == 0.0


@pytest.mark.slow
def test_closed_loop_against_quarry(sqlite_settings, tmp_path: Path) -> None:
    """The benchmark's own server start (batching on) and 2 s of /v1/embed at 4 clients."""
    server = quarry_server(
        "quarry-batch",
        Path(sqlite_settings.data_dir).resolve(),
        tmp_path,
        batching=True,
        extra_env={"QUARRY_RERANK__PRELOAD": "false"},
    )
    with server:
        s = run_level(
            server.base_url,
            quarry_embed(),
            TEXTS,
            Load(clients=4, duration_s=2.0, warmup_s=0.5),
            server.cpu_seconds,
        ).summary()
    assert server.proc.poll() is not None  # stopped
    assert s["status"]["200"] > 0 and s["status"]["other"] == 0, s
    assert s["server_cpu_cores"] is not None and s["server_cpu_cores"] > 0
