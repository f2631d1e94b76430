"""The full stack without docker: a real Celery worker process and a real uvicorn server
against Postgres + Redis, driven over HTTP like a user would."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import httpx
import pytest
from procs import Proc, api, migrate, wait_ready, worker

from core.ingest_files import DEMO_CORPUS, read_jsonl

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "QUARRY_DATABASE_URL": pg_url,
        "QUARRY_BROKER_URL": redis_url,
        "QUARRY_RESULT_BACKEND": redis_url,
        "QUARRY_DATA_DIR": str(tmp / "data"),
        "QUARRY_INDEX__SEGMENT_MAX_DOCS": "400",
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    migrate(env)
    api_proc, base = api(env, tmp)
    procs = [worker(env, tmp), api_proc]
    try:
        wait_ready(base, procs)
        yield {"base": base, "procs": procs, "env": env}
    finally:
        for proc in procs:
            proc.stop()


def _wait_jobs(client: httpx.Client, job_ids: list[str], procs: list[Proc]) -> list[dict]:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        jobs = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
        if all(j["state"] in ("succeeded", "failed") for j in jobs):
            return jobs
        time.sleep(1)
    pytest.fail("jobs did not finish\n" + "\n".join(p.tail() for p in procs))


def test_ingest_search_delete_over_the_full_stack(stack: dict) -> None:
    docs = [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in read_jsonl(DEMO_CORPUS)]
    assert len(docs) >= 1000
    with httpx.Client(base_url=stack["base"], timeout=120) as client:
        r = client.post("/v1/collections", json={"name": "cranfield"})
        assert r.status_code == 201, r.text
        job_ids = []
        for start in range(0, len(docs), 700):
            r = client.post(
                "/v1/collections/cranfield/documents", json={"documents": docs[start : start + 700]}
            )
            assert r.status_code == 202, r.text
            job_ids.append(r.json()["job"]["id"])
        jobs = _wait_jobs(client, job_ids, stack["procs"])
        assert all(j["state"] == "succeeded" for j in jobs), jobs
        assert sum(j["done"] for j in jobs) == len(docs)

        # A duplicated delivery of a finished job adds nothing.
        from celery import Celery

        producer = Celery(broker=stack["env"]["QUARRY_BROKER_URL"])
        producer.send_task("quarry.ingest", args=[job_ids[0]], queue="gpu")
        time.sleep(3)
        coll = client.get("/v1/collections/cranfield").json()
        assert coll["documents"]["indexed"] == len(docs)
        assert coll["vectors"] == len(docs)

        rng = random.Random(7)
        sample = rng.sample(docs, 25)
        for doc in sample:
            r = client.post(
                "/v1/search", json={"collection": "cranfield", "query": doc["text"], "k": 3}
            )
            assert r.status_code == 200, r.text
            top = r.json()["data"][0]
            # Cranfield holds a few verbatim duplicates: the same text at rank 1 counts too.
            assert top["id"] == doc["id"] or top["text"] == doc["text"], (doc["id"], top["id"])

        victims = sample[:10]
        for doc in victims[:5]:
            assert (
                client.delete(f"/v1/collections/cranfield/documents/{doc['id']}").status_code == 204
            )
        r = client.post(
            "/v1/collections/cranfield/documents/delete",
            json={"ids": [d["id"] for d in victims[5:]]},
        )
        assert r.json() == {"deleted": 5}
        for doc in victims:
            hits = client.post(
                "/v1/search", json={"collection": "cranfield", "query": doc["text"], "k": 10}
            ).json()["data"]
            assert doc["id"] not in [h["id"] for h in hits]
            assert client.get(f"/v1/collections/cranfield/documents/{doc['id']}").status_code == 404
        assert (
            client.get("/v1/collections/cranfield").json()["documents"]["indexed"] == len(docs) - 10
        )
