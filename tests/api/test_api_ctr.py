"""CTR over HTTP against real ``quarry serve`` processes, with real ``ranker.ctr`` models
trained in the test (one short epoch on a synthetic log, a few seconds on CPU).

- The full stack (Postgres, the suite's Redis, a real Celery worker): ``quarry ctr deploy``
  runs its rebuild in the worker; events posted to the API reach the worker, whose BSE task
  writes each user's encoded history to Redis; ``/v1/ctr/score`` serves from that state (the
  test decodes it from Redis and scores it with the model itself: the same numbers); a
  second deployment switches the name only once its rebuild is done.
- The embedded mode (SQLite, in-process jobs, the in-process store): ``quarry events load``
  from a CSV while the server runs; the server encodes users from the database on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from procs import ROOT, Proc, api, migrate, wait_ready, worker

pytestmark = pytest.mark.slow

QUARRY = [sys.executable, "-m", "cli"]
ITEMS = [f"m{n}" for n in range(40)]


def train_tiny_ctr(out: Path, kind: str = "sdim", seed: int = 0) -> Path:
    """A real model trained for one epoch on a synthetic log: 30 users, 40 items in 4
    categories, each user preferring a band of items."""
    from ranker.ctr import (
        InteractionLog,
        ItemCatalogue,
        SampleOptions,
        TrainOptions,
        build_samples,
        make_config,
        train_model,
    )

    rng = np.random.default_rng(seed)
    n = 1500
    users = rng.integers(0, 30, n)
    log = InteractionLog(
        users=np.array([f"u{u}" for u in users]),
        items=((users * 3 + rng.integers(0, 12, n)) % 40).astype(np.int64),
        times=np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)).astype(np.int64),
        catalogue=ItemCatalogue(ITEMS, np.arange(40) % 4 + 1, ["", "a", "b", "c", "d"]),
        labels=(rng.random(n) < 0.6).astype(np.float32),
    )
    options = {"embed_dim": 8, "mlp": (16,), "hashes": 4, "hash_bits": 2, "top_k": 4}
    train_model(
        build_samples(log, SampleOptions(max_history=50)),
        make_config(kind, n_items=40, n_categories=5, options=options),
        TrainOptions(epochs=1, batch_size=128, device="cpu", progress=False),
        out,
        seed=seed,
    )
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ctr-models")
    return {"v1": train_tiny_ctr(tmp / "v1", seed=0), "v2": train_tiny_ctr(tmp / "v2", seed=1)}


def quarry(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [*QUARRY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp / "data"),
        "QUARRY_ENV": "test",
        "QUARRY_EMBEDDER__PRELOAD": "false",  # no text model: CTR only
        "QUARRY_CTR__MAX_SCORE_ITEMS": "50",
        "QUARRY_CTR__MAX_EVENTS": "100",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }
    for key in ("QUARRY_DATABASE_URL", "QUARRY_BROKER_URL", "QUARRY_RESULT_BACKEND"):
        if key not in extra:
            env.pop(key, None)
    env.pop("QUARRY_API_KEYS", None)
    return env


def events(user: str, items: list[str], start: int) -> list[dict[str, Any]]:
    return [
        {"user_id": user, "item_id": item, "timestamp": 1_700_000_000 + 60 * (start + i)}
        for i, item in enumerate(items)
    ]


def _until(check: Any, what: str, procs: list[Proc], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen\n" + "\n".join(p.tail() for p in procs))


# --- the full stack ------------------------------------------------------------------------------


@pytest.mark.services
def test_events_reach_the_worker_and_score_reads_its_state(
    pg_url: str, redis_url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    import redis

    from ranker.ctr import load_model
    from service.ctr_store import RedisStateStore, decode_state

    env = _env(
        tmp_path,
        QUARRY_DATABASE_URL=pg_url,
        QUARRY_BROKER_URL=redis_url,
        QUARRY_RESULT_BACKEND=redis_url,
        QUARRY_CTR__BSE_DELAY_S="0.2",
    )
    migrate(env)
    rds = redis.Redis.from_url(redis_url)
    v1 = load_model(models["v1"])
    api_proc, base = api(env, tmp_path)
    procs = [worker(env, tmp_path), api_proc]
    try:
        wait_ready(base, procs)
        out = quarry(env, "ctr", "deploy", str(models["v1"]), "--name", "full")
        assert f"full now serves version {v1.version}" in out, out
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post(
                "/v1/items", json={"items": [{"id": i, "category": "film"} for i in ITEMS]}
            )
            assert r.status_code == 200 and r.json()["created"] == 40, r.text

            first = events("alice", ["m1", "m4", "m7", "m2", "m9", "m5"], 0)
            r = client.post("/v1/events", json={"events": first})
            assert r.json() == {"received": 6, "stored": 6, "duplicates": 0, "users": 1}, r.text
            key = RedisStateStore.key(v1.version, "alice")

            def covered(n: int) -> Any:
                return (raw := rds.hmget(key, ["events", "state"]))[0] == str(n).encode() and raw

            _, written = _until(lambda: covered(6), "the worker's state for alice", procs)
            r = client.post(
                "/v1/ctr/score",
                json={"user_id": "alice", "items": ["m3", "m30", "m3"], "model": "full"},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model"], body["version"], body["kind"]) == ("full", v1.version, "sdim")
            assert body["history_length"] == 6
            assert {"state_ms", "score_ms", "total_ms"} <= body["timings"].keys()
            # The worker's state, decoded here and scored by the model itself: the same.
            want = v1.score(decode_state(written), v1.catalogue.rows(["m3", "m30", "m3"]))
            got = [s["probability"] for s in body["scores"]]
            assert [s["item"] for s in body["scores"]] == ["m3", "m30", "m3"]
            assert np.allclose(got, want, atol=1e-6) and got[0] == got[2]
            assert rds.hget(key, "state") == written  # served as stored, not re-encoded

            # Redelivered events change nothing; new ones are appended by the worker.
            r = client.post("/v1/events", json={"events": first})
            assert r.json()["stored"] == 0 and r.json()["duplicates"] == 6
            r = client.post("/v1/events", json={"events": events("alice", ["m8", "m6"], 10)})
            assert r.json()["stored"] == 2
            _until(lambda: covered(8), "the incremental update", procs)
            r = client.post("/v1/ctr/score", json={"user_id": "alice", "items": ["m3"]})
            assert r.status_code == 404  # the default name was never deployed
            assert r.json()["error"]["code"] == "ctr_model_not_found"
            score = client.post(
                "/v1/ctr/score", json={"user_id": "alice", "items": ["m3"], "model": "full"}
            ).json()
            assert score["history_length"] == 8

            r = client.get("/v1/users/alice/events", params={"limit": 3})
            assert [e["item_id"] for e in r.json()["data"]] == ["m6", "m8", "m5"]
            assert r.json()["total"] == 8 and r.json()["count"] == 3

            cold = client.post(
                "/v1/ctr/score", json={"user_id": "nobody", "items": ["m3"], "model": "full"}
            ).json()
            assert cold["history_length"] == 0
            assert np.isclose(cold["scores"][0]["probability"], v1.score(None, [3])[0])
            r = client.post(
                "/v1/ctr/score", json={"user_id": "a", "items": ["m3", "zz"], "model": "full"}
            )
            assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_items"
            assert r.json()["error"]["details"]["items"] == ["zz"]
            r = client.post(
                "/v1/ctr/score", json={"user_id": "a", "items": ["m3"] * 51, "model": "full"}
            )
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

            # A new version: rebuilt by the worker (a job), then the name switches to it.
            v2 = load_model(models["v2"])
            assert v2.version != v1.version
            out = quarry(env, "ctr", "deploy", str(models["v2"]), "--name", "full")
            assert f"full now serves version {v2.version}" in out, out
            listed = client.get("/v1/ctr/models").json()["data"]
            mine = [m for m in listed if m["name"] == "full"]
            assert [(m["version"], m["state"]) for m in mine] == [
                (v2.version, "active"),
                (v1.version, "retired"),
            ]
            job = client.get(f"/v1/jobs/{mine[0]['job_id']}").json()
            assert job["kind"] == "ctr_rebuild" and job["state"] == "succeeded"
            assert job["done"] >= 1 and mine[0]["users"] == job["done"]
            rebuilt = rds.hget(RedisStateStore.key(v2.version, "alice"), "state")
            assert rebuilt is not None  # written by the rebuild, before the switch
            assert 0 < rds.ttl(key) <= 600  # the retired version's states expire

            def on_v2() -> Any:
                r = client.post(
                    "/v1/ctr/score", json={"user_id": "alice", "items": ["m3"], "model": "full"}
                )
                return r.json()["version"] == v2.version and r.json()

            switched = _until(on_v2, "the switch to v2", procs, timeout_s=5)
            assert switched["history_length"] == 8
            want2 = v2.score(decode_state(rebuilt), v2.catalogue.rows(["m3"]))
            assert np.isclose(switched["scores"][0]["probability"], want2[0], atol=1e-6)
    finally:
        for proc in procs:
            proc.stop()


# --- the embedded mode ---------------------------------------------------------------------------


def test_embedded_bulk_load_and_on_the_fly_encoding(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from ranker.ctr import load_model

    env = _env(tmp_path)
    migrate(env)
    model = load_model(models["v1"])
    ratings = tmp_path / "ratings.csv"
    rows = ["userId,movieId,rating,timestamp"]
    # The model learnt from positive behaviours (its sample options): ratings under 4 are left
    # out of the served history too.
    rated = {5: 4.5, 2: 3.0, 9: 5.0, 11: 2.0}
    rows += [f"7,m{n},{r},{1_600_000_000 + 100 * n}" for n, r in rated.items()]
    rows += ["8,m1,4.0,1600000000", "8,unknown,3.0,1600000100"]
    ratings.write_text("\n".join(rows) + "\n")
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title,genres\nm1,One,Drama|War\nm2,Two,Comedy\n")

    api_proc, base = api(env, tmp_path)
    try:
        wait_ready(base, [api_proc])
        assert "is active" in quarry(env, "ctr", "deploy", str(models["v1"]))  # no rebuild
        out = quarry(
            env, "events", "load", str(ratings), "--user-col", "userId", "--item-col", "movieId"
        )
        assert "6 events: 6 stored, 0 already there; 2 users" in out, out
        out = quarry(
            env, "events", "items", str(movies), "--id-col", "movieId",
            "--category-col", "genres", "--metadata-col", "title",
        )  # fmt: skip
        assert "2 items: 2 new" in out, out
        with httpx.Client(base_url=base, timeout=30) as client:
            item = client.get("/v1/items/m1").json()
            assert item["category"] == "Drama|War" and item["metadata"] == {"title": "One"}
            assert client.get("/v1/items/none").json()["error"]["code"] == "item_not_found"

            # The default deployment serves within a second; user 7 is encoded from the
            # database on first use (the CLI process could not reach the server's store),
            # from the events rated 4 or more, in time order.
            def scored() -> Any:
                r = client.post("/v1/ctr/score", json={"user_id": "7", "items": ["m3", "m4"]})
                return r.status_code == 200 and r.json()

            body = _until(scored, "the deployment to serve", [api_proc], timeout_s=5)
            assert body["model"] == "default" and body["history_length"] == 2
            history = model.catalogue.rows(["m5", "m9"])
            want = model.score(model.encode(history), model.catalogue.rows(["m3", "m4"]))
            assert np.allclose([s["probability"] for s in body["scores"]], want, atol=1e-6)
            r = client.post("/v1/ctr/score", json={"user_id": "8", "items": ["m3"]})
            assert r.json()["history_length"] == 1  # the unknown item is left out

            # Events over HTTP are encoded before the next score (read-your-writes); events
            # without a rating or label count as positive.
            r = client.post("/v1/events", json={"events": events("7", ["m20", "m21"], 0)})
            assert r.json()["stored"] == 2
            r = client.post("/v1/ctr/score", json={"user_id": "7", "items": ["m3"]})
            assert r.json()["history_length"] == 4

            # Limits and validation, with stable codes.
            r = client.post("/v1/events", json={"events": events("9", ["m1"] * 101, 0)})
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
            bad = {"user_id": "9", "item_id": "m1", "timestamp": "1800-01-01T00:00:00Z"}
            r = client.post("/v1/events", json={"events": [bad]})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
            r = client.get("/v1/users/7/events", params={"limit": 5000})
            assert r.status_code == 422
            r = client.get("/v1/users/a%2Fb/events")
            assert r.status_code == 200 and r.json()["total"] == 0
    finally:
        api_proc.stop()
