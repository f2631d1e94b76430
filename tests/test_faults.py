"""Faults caused on purpose against real processes (Postgres, Redis, a Celery worker,
uvicorn), each bounded in time and on loopback only:

- ``kill -9`` of the worker mid-ingest: another worker finishes the job within two minutes
  of starting, every document indexed exactly once (job leases + the reaper);
- a job whose message was lost (the API died between commit and send) is re-dispatched;
- deleting a collection while its job runs cancels the job, whose row stays;
- a broker that is down: enqueueing fails in well under 2 s with 503 ``broker_unavailable``,
  the job is marked failed (ingest and compaction alike), and ``/healthz`` stays fast while
  60 ingests fail concurrently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from procs import Proc, api, free_port, migrate, wait_ready, worker
from sqlalchemy import select

pytestmark = [pytest.mark.services, pytest.mark.slow]

N_DOCS = 3000
WORDS = [
    "river",
    "engine",
    "protein",
    "poem",
    "market",
    "storm",
    "bridge",
    "glacier",
    "violin",
    "orbit",
]


def _docs(n: int, prefix: str = "d") -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "text": f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} note {i}"}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def env(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("faults")
    env = {
        **os.environ,
        "QUARRY_DATABASE_URL": pg_url,
        "QUARRY_BROKER_URL": redis_url,
        "QUARRY_DATA_DIR": str(tmp / "data"),
        "QUARRY_INDEX__SEGMENT_MAX_DOCS": "300",
        "QUARRY_LIMITS__MAX_BATCH_DOCS": str(N_DOCS),
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "QUARRY_EMBEDDER__BATCH_TOKENS": "2048",
        # Short leases and a quick reaper so that recovery fits the test's time bounds.
        "QUARRY_JOBS__LEASE_S": "6",
        "QUARRY_JOBS__REAP_INTERVAL_S": "1",
        "QUARRY_JOBS__REQUEUE_AFTER_S": "5",
        "QUARRY_JOBS__CLEANUP_GRACE_S": "2",
        "QUARRY_JOBS__CLEANUP_INTERVAL_S": "2",
        "HF_HUB_OFFLINE": "1",
    }
    migrate(env)
    return env


@pytest.fixture(scope="module")
def stack(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("faults-logs")
    api_proc, base = api(env, logs)
    procs: dict[str, Proc] = {"api": api_proc, "worker": worker(env, logs)}
    try:
        wait_ready(base, list(procs.values()))
        yield {"base": base, "procs": procs, "logs": logs, "env": env}
    finally:
        for proc in procs.values():
            proc.stop()


def _tails(stack: dict) -> str:
    return "\n".join(p.tail() for p in stack["procs"].values())


def _job(client: httpx.Client, job_id: str) -> dict:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _wait(stack: dict, what: str, pred: object, timeout_s: float) -> float:
    """Poll ``pred()`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not pred():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f}s\n{_tails(stack)}")
        time.sleep(0.25)
    return time.monotonic() - t0


def test_kill_9_worker_mid_ingest_recovers_within_two_minutes(stack: dict) -> None:
    with httpx.Client(base_url=stack["base"], timeout=60) as client:
        assert client.post("/v1/collections", json={"name": "crash"}).status_code == 201
        r = client.post("/v1/collections/crash/documents", json={"documents": _docs(N_DOCS)})
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]
        # Kill the worker once the job is well under way (some chunks committed, more to do).
        _wait(
            stack,
            "progress",
            lambda: (
                _job(client, job_id)["state"] == "running" and _job(client, job_id)["done"] >= 600
            ),
            240,
        )
        stack["procs"]["worker"].kill()
        before = _job(client, job_id)
        assert before["state"] == "running" and before["done"] < N_DOCS, before

        stack["procs"]["worker"] = worker(stack["env"], stack["logs"], name="worker-2")
        took = _wait(stack, "recovery", lambda: _job(client, job_id)["state"] == "succeeded", 120)
        job = _job(client, job_id)
        assert job["attempts"] >= 2 and job["done"] == N_DOCS, job
        coll = client.get("/v1/collections/crash").json()
        # Exactly once: as many vectors as documents, all indexed, none pending.
        assert coll["documents"] == {"pending": 0, "indexed": N_DOCS}, coll
        assert coll["vectors"] == N_DOCS, coll
        print(f"job recovered {took:.1f}s after the new worker started")
        hits = client.post("/v1/search", json={"collection": "crash", "query": "note 2999"}).json()
        assert hits["data"], hits


def test_a_job_whose_message_was_lost_is_sent_again(stack: dict) -> None:
    """The API died after committing the job and before sending it: the reaper sends it."""
    from core.db import session_scope
    from core.documents import DocumentIn, upsert_documents
    from core.jobs import create_job
    from core.models import JobKind
    from core.settings import Settings
    from service import build
    from service.collections import get_collection

    with httpx.Client(base_url=stack["base"], timeout=60) as client:
        assert client.post("/v1/collections", json={"name": "lost"}).status_code == 201
        settings = Settings(database_url=stack["env"]["QUARRY_DATABASE_URL"])
        with build(settings) as c, session_scope(c.sessions) as s:
            coll = get_collection(c, "lost").collection
            job = create_job(s, JobKind.INGEST, collection_id=coll.id, collection_name="lost")
            res = upsert_documents(
                s, coll, [DocumentIn(d["id"], d["text"]) for d in _docs(50, "l")], job_id=job.id
            )
            job.total = len(res.pending_ids)
            job_id = job.id  # committed, never sent
        _wait(stack, "re-dispatch", lambda: _job(client, job_id)["state"] == "succeeded", 60)
        assert client.get("/v1/collections/lost").json()["vectors"] == 50


def test_deleting_a_collection_cancels_its_running_job(stack: dict) -> None:
    with httpx.Client(base_url=stack["base"], timeout=60) as client:
        assert client.post("/v1/collections", json={"name": "doomed"}).status_code == 201
        r = client.post("/v1/collections/doomed/documents", json={"documents": _docs(N_DOCS)})
        job_id = r.json()["job"]["id"]
        _wait(stack, "start", lambda: _job(client, job_id)["state"] == "running", 120)
        assert client.delete("/v1/collections/doomed").status_code == 204
        job = _job(client, job_id)  # the row outlives its collection
        assert job["state"] == "cancelled" and job["collection"] == "doomed", job
        log = stack["procs"]["worker"].log_path
        _wait(stack, "the worker to stop", lambda: "was cancelled; stopped" in log.read_text(), 60)
        done = _job(client, job_id)["done"]
        time.sleep(2)
        assert _job(client, job_id)["done"] == done and _job(client, job_id)["state"] == "cancelled"
        assert client.get("/v1/collections/doomed").status_code == 404
        # No folder of the deleted collection survives the clean-up.
        seg_root = Path(stack["env"]["QUARRY_DATA_DIR"]) / "segments"
        from core.db import make_engine

        engine = make_engine(stack["env"]["QUARRY_DATABASE_URL"])
        with engine.connect() as conn:
            from core.models import Collection

            live = {str(i) for i in conn.execute(select(Collection.id)).scalars()}
        engine.dispose()
        _wait(
            stack,
            "clean-up",
            lambda: {p.name for p in seg_root.iterdir() if p.is_dir()} <= live,
            30,
        )


def test_broker_down_fails_fast_and_never_starves_health(
    env: dict[str, str], tmp_path: Path
) -> None:
    down = {**env, "QUARRY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc, base = api(down, tmp_path, name="api-no-broker")
    try:
        wait_ready(base, [proc], status=503)  # ready except for the broker
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/readyz").json()["checks"]["broker"].startswith("unreachable")
            assert client.post("/v1/collections", json={"name": "nobroker"}).status_code == 201
            t0 = time.monotonic()
            r = client.post("/v1/collections/nobroker/documents", json={"documents": _docs(3)})
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
            assert took < 2.0, took
            r = client.post("/v1/collections/nobroker/compact", json={})
            assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"

            def ingest(i: int) -> tuple[int, float]:
                docs = _docs(2, f"c{i}-")
                with httpx.Client(base_url=base, timeout=30) as c:
                    url = "/v1/collections/nobroker/documents"
                    t = time.monotonic()
                    code = c.post(url, json={"documents": docs}).status_code
                    return code, time.monotonic() - t

            with ThreadPoolExecutor(60) as pool:
                futures = [pool.submit(ingest, i) for i in range(60)]
                health = []
                for _ in range(10):
                    t = time.monotonic()
                    assert client.get("/healthz").status_code == 200
                    health.append(time.monotonic() - t)
                    time.sleep(0.05)
                results = [f.result() for f in futures]
            codes = [code for code, _ in results]
            assert set(codes) == {503}, codes
            assert max(health) < 1.0, health
            slowest = max(t for _, t in results)
            assert slowest < 10.0, slowest  # 60 at once on 2 cores, none stuck
            print(
                f"broker down: one ingest 503 in {took:.2f}s; 60 concurrent ingests all 503, "
                f"slowest {slowest:.2f}s; /healthz max {max(health) * 1000:.0f} ms meanwhile"
            )
        # Nothing stranded: every job the API committed is failed, none queued.
        from core.db import make_engine
        from core.models import Collection, Job

        engine = make_engine(env["QUARRY_DATABASE_URL"])
        with engine.connect() as conn:
            cid = conn.execute(
                select(Collection.id).where(Collection.name == "nobroker")
            ).scalar_one()
            states = conn.execute(select(Job.state).where(Job.collection_id == cid)).scalars().all()
        engine.dispose()
        assert len(states) == 62 and set(states) == {"failed"}, states
    finally:
        proc.stop()
