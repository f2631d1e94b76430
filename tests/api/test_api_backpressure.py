"""A real uvicorn server with a tiny model queue, flooded: 503 + Retry-After, never a 500."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from procs import api, migrate, wait_ready

COLLECTION = "flood"
TEXT = "an experimental study of heat transfer in a supersonic boundary layer " * 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("backpressure")
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp / "data"),
        "QUARRY_ENV": "test",
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "QUARRY_SERVING__MAX_QUEUE_REQUESTS": "2",
        "QUARRY_SERVING__MAX_BATCH_REQUESTS": "1",
        "QUARRY_SERVING__WORKERS": "1",
        "QUARRY_SERVING__RETRY_AFTER_S": "2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for key in ("QUARRY_DATABASE_URL", "QUARRY_BROKER_URL", "QUARRY_RESULT_BACKEND"):
        env.pop(key, None)
    migrate(env)
    proc, base = api(env, tmp)
    try:
        wait_ready(base, [proc])
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.post("/v1/collections", json={"name": COLLECTION}).status_code == 201
            docs = [{"id": str(i), "text": f"document {i} about heat transfer"} for i in range(5)]
            r = client.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": docs})
            job = r.json()["job"]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "succeeded":
                assert time.monotonic() < deadline, proc.tail()
                time.sleep(0.2)
        yield base
    finally:
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert "Traceback" not in log, proc.tail()


async def _flood(base: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            if i % 2:
                return await client.post(
                    "/v1/search", json={"collection": COLLECTION, "query": TEXT, "k": 3}
                )
            return await client.post("/v1/embed", json={"inputs": [TEXT, TEXT]})

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_a_flooded_queue_answers_503_with_retry_after_and_never_500(server: str) -> None:
    responses = asyncio.run(_flood(server, 96))
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes[200] > 0 and codes[503] > 0, codes
    searches = Counter(r.status_code for r in responses[1::2])
    assert searches[200] > 0 and searches[503] > 0, searches
    for r in responses:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "2"
            assert r.json()["error"]["code"] in ("overloaded", "deadline_exceeded"), r.text
    metrics = httpx.get(f"{server}/metrics").text
    assert 'quarry_queue_rejected_total{queue="embed:all-MiniLM-L6-v2",reason="queue_full"}' in (
        metrics
    )
    assert "quarry_batch_requests_bucket" in metrics
    # Drained: ready again, and answering.
    assert httpx.get(f"{server}/readyz").status_code == 200
    r = httpx.post(f"{server}/v1/embed", json={"inputs": ["heat"]}, timeout=30)
    assert r.status_code == 200


def test_concurrent_embeds_match_a_single_one(server: str) -> None:
    one = httpx.post(f"{server}/v1/embed", json={"inputs": ["heat transfer"]}, timeout=30)
    alone = np.asarray(one.json()["embeddings"][0])

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post("/v1/embed", json={"inputs": ["heat transfer"]})
                        for _ in range(3)
                    )
                )
            )

    for r in asyncio.run(many()):
        if r.status_code == 200:
            np.testing.assert_allclose(r.json()["embeddings"][0], alone, atol=2e-5)
        else:
            assert r.status_code == 503
