"""``POST /v1/rerank`` and the rerank stage of ``POST /v1/search`` over HTTP, against a real
``quarry serve`` process with the real ``embedder:all-MiniLM-L6-v2`` reranker (preloaded),
small rerank limits, and a collection indexed through the API."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from procs import Proc, api, migrate, wait_ready

pytestmark = pytest.mark.slow

RERANKER = "embedder:all-MiniLM-L6-v2"
MISSING = "/nonexistent/quarry-reranker"  # allowed by the operator, not installed
LIMITS = {
    "QUARRY_RERANK__MAX_DOCUMENTS": "20",
    "QUARRY_RERANK__MAX_QUERY_CHARS": "300",
    "QUARRY_RERANK__MAX_DOCUMENT_CHARS": "2000",
}

QUERY = "How do vaccines teach the immune system to fight a virus?"
RELEVANT = (
    "A vaccine shows the body's immune defences a harmless piece of a pathogen, so that "
    "antibodies and memory cells are ready when the real virus arrives."
)
DISTRACTORS = [
    "The central bank raised interest rates by a quarter point.",
    "Simmer the tomato sauce with garlic and basil for twenty minutes.",
    "The striker scored twice in the second half of the final.",
    "Computer viruses spread through email attachments and infected downloads.",
    "Glaciers retreat as average summer temperatures rise.",
    "The orchestra rehearsed the symphony for the spring concert.",
    "A new system of bike lanes opened downtown to fight traffic.",
]

# The collection: for the query below BM25 puts the documents full of "night" first (the
# howling puppy shares only that word with it); the reranker (MiniLM) knows better.
COLLECTION = "rerank-kb"
KB = {
    "night-club": "Night after night the club stays open all night long, every night.",
    "night-sky": "On a clear night the sky at night shows the Milky Way.",
    "dog": "The puppy next door yelps and howls for hours, every night until dawn.",
    "cooking": "Knead the dough and let it rise overnight in the fridge.",
    "finance": "Bond yields climbed after the inflation report.",
    "football": "The goalkeeper saved a penalty in the last minute.",
    "space": "The probe entered orbit around Jupiter after a five-year cruise.",
    "garden": "Water the tomatoes early in the morning during a heat wave.",
    "music": "The band played their new album live for the first time.",
    "trains": "The night train to Vienna leaves at ten.",
}
KB_QUERY = "dog barking at night"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("rerank-api")
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp / "data"),
        "QUARRY_ENV": "test",
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "QUARRY_RERANK__DEVICE": "cpu",
        "QUARRY_RERANK__DEFAULT_MODEL": RERANKER,
        "QUARRY_RERANK__PRELOAD": "true",
        "QUARRY_RERANK__ALLOWED_MODELS": json.dumps([MISSING]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **LIMITS,
    }
    for key in ("QUARRY_DATABASE_URL", "QUARRY_BROKER_URL", "QUARRY_RESULT_BACKEND"):
        env.pop(key, None)
    migrate(env)
    proc, base = api(env, tmp)
    try:
        wait_ready(base, [proc])
        _index(base, proc)
        yield base
    finally:
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert "Traceback" not in log, proc.tail()
    # Preloaded at start-up, and loaded only then.
    assert log.count(f"Loading reranker {RERANKER}") == 1, proc.tail()


def _index(base: str, proc: Proc) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/collections", json={"name": COLLECTION})
        assert r.status_code == 201, r.text
        docs = [{"id": k, "text": v} for k, v in KB.items()]
        r = client.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": docs})
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        deadline = time.monotonic() + 120
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.2)
            job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["state"] == "succeeded", job


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code, r.text
    return error


# --- /v1/rerank -------------------------------------------------------------------------------


def test_the_relevant_document_comes_first(client: httpx.Client) -> None:
    documents = [*DISTRACTORS[:4], RELEVANT, *DISTRACTORS[4:]]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": documents})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == RERANKER
    results = body["results"]
    assert results[0]["index"] == 4
    assert sorted(x["index"] for x in results) == list(range(len(documents)))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1] + 0.05  # clearly first, not by a hair
    assert all("document" not in x for x in results)  # only with return_documents
    assert body["usage"] == {"documents": len(documents)}
    assert body["timings"]["rerank_ms"] > 0


def test_top_n_objects_and_return_documents(client: httpx.Client) -> None:
    documents: list[Any] = [{"text": d, "id": f"x{i}"} for i, d in enumerate(DISTRACTORS)]
    documents.insert(2, {"text": RELEVANT, "title": "Vaccines", "meta": {"n": 1}})
    documents.append("A plain string among the objects about vaccines.")
    body = {"query": QUERY, "documents": documents, "top_n": 2, "return_documents": True}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    assert results[0] == {
        "index": 2,
        "relevance_score": results[0]["relevance_score"],
        "document": {"text": RELEVANT},  # the text only: other fields are not echoed
    }
    top = results[1]["index"]
    expected = documents[top] if isinstance(documents[top], str) else documents[top]["text"]
    assert results[1]["document"] == {"text": expected}
    # The same scores as without top_n: top_n only cuts the list.
    full = client.post("/v1/rerank", json={**body, "top_n": None}).json()["results"]
    assert full[:2] == results and len(full) == len(documents)


def test_the_default_and_named_model_agree(client: httpx.Client) -> None:
    docs = ["cats purr", "dogs bark"]
    a = client.post("/v1/rerank", json={"query": "barking", "documents": docs})
    b = client.post("/v1/rerank", json={"query": "barking", "documents": docs, "model": RERANKER})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert [x["index"] for x in a.json()["results"]] == [1, 0]
    assert a.json()["results"] == b.json()["results"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"query": " \t", "documents": ["a"]}, 422, "invalid_request"),
        ({"query": "", "documents": ["a"]}, 422, "invalid_request"),
        ({"query": "q", "documents": []}, 422, "invalid_request"),
        ({"query": "q"}, 422, "invalid_request"),
        ({"query": "q", "documents": "one text"}, 422, "invalid_request"),
        ({"query": "q", "documents": [1, 2]}, 422, "invalid_request"),
        ({"query": "q", "documents": ["ok", " "]}, 422, "invalid_request"),
        ({"query": "q", "documents": [{"title": "no text"}]}, 422, "invalid_request"),
        ({"query": "q", "documents": [{"text": "  "}]}, 422, "invalid_request"),
        ({"query": "q", "documents": [{"text": None}]}, 422, "invalid_request"),
        ({"query": "q\x00", "documents": ["a"]}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a\x00"]}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"] * 21}, 413, "payload_too_large"),
        ({"query": "q" * 301, "documents": ["a"]}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a", "d" * 2001]}, 422, "invalid_request"),
        ({"query": "q", "documents": [{"text": "d" * 2001}]}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"], "top_n": "two"}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"], "top_n": True}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"], "rank_fields": ["x"]}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"], "model": "/etc"}, 403, "forbidden"),
        ({"query": "q", "documents": ["a"], "model": "embedder:gpt2"}, 403, "forbidden"),
        ({"query": "q", "documents": ["a"], "model": "embedder:"}, 422, "invalid_request"),
        ({"query": "q", "documents": ["a"], "model": MISSING}, 422, "model_not_available"),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else str(v),
)
def test_bad_requests_get_a_4xx_with_a_stable_code(
    client: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    _error(client.post("/v1/rerank", json=body), status, code)


def test_limits_are_exact_and_messages_say_which_limit(client: httpx.Client) -> None:
    ok = {"query": "q" * 300, "documents": ["a"] * 19 + ["d" * 2000]}
    assert client.post("/v1/rerank", json=ok).status_code == 200
    error = _error(
        client.post("/v1/rerank", json={"query": "q", "documents": ["a"] * 21}),
        413,
        "payload_too_large",
    )
    assert "QUARRY_RERANK__MAX_DOCUMENTS" in error["message"]
    error = _error(client.post("/v1/rerank", json={"query": "q", "documents": ["a", " "]}), 422,
                   "invalid_request")  # fmt: skip
    assert "Document 1" in error["message"]
    error = _error(
        client.post("/v1/rerank", json={"query": "q", "documents": ["a"], "model": "/etc"}),
        403,
        "forbidden",
    )
    assert RERANKER in error["message"] and "QUARRY_RERANK__ALLOWED_MODELS" in error["message"]


def test_the_schema_documents_the_route_and_its_limits(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/rerank" in schema["paths"]
    request = schema["components"]["schemas"]["RerankRequest"]["properties"]
    assert request["documents"]["maxItems"] == 20
    assert request["query"]["maxLength"] == 300
    stage = schema["components"]["schemas"]["SearchRerank"]["properties"]["candidates"]
    assert {"type": "integer", "minimum": 1, "maximum": 20}.items() <= stage["anyOf"][0].items()


# --- the rerank stage of /v1/search -----------------------------------------------------------


def _search(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/search", json={"collection": COLLECTION, **body})


def test_lexical_first_stage_reranked_puts_the_relevant_hit_first(client: httpx.Client) -> None:
    plain = _search(client, query=KB_QUERY, mode="lexical", k=3)
    assert plain.status_code == 200, plain.text
    assert plain.json()["data"][0]["id"] != "dog"  # BM25 prefers the "night" documents
    assert "reranker" not in plain.json() and "rerank_ms" not in plain.json()["timings"]
    assert all("first_stage_score" not in h for h in plain.json()["data"])

    r = _search(client, query=KB_QUERY, mode="lexical", k=3, rerank={"candidates": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["data"]
    assert len(hits) == 3 and hits[0]["id"] == "dog"
    assert body["reranker"] == RERANKER
    assert body["timings"]["rerank_ms"] > 0 and "lexical_ms" in body["timings"]
    assert body["timings"]["total_ms"] >= body["timings"]["rerank_ms"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # The first stage's (BM25) scores are kept, and the first stage's own order differs.
    bm25 = {h["id"]: h["score"] for h in _search(client, query=KB_QUERY, mode="lexical", k=10)
            .json()["data"]}  # fmt: skip
    for hit in hits:
        assert hit["first_stage_score"] == pytest.approx(bm25[hit["id"]])
        assert hit["text"] == KB[hit["id"]]
    # The rerank score is the reranker's: the same as /v1/rerank gives for that text.
    direct = client.post("/v1/rerank", json={"query": KB_QUERY, "documents": [KB["dog"]]})
    assert hits[0]["score"] == pytest.approx(direct.json()["results"][0]["relevance_score"])


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_k_is_respected_in_every_mode(client: httpx.Client, mode: str) -> None:
    for k, candidates in ((1, 5), (4, 2), (2, None)):
        stage = {"candidates": candidates} if candidates else {}
        r = _search(client, query=KB_QUERY, mode=mode, k=k, rerank=stage, include_text=False)
        assert r.status_code == 200, r.text
        hits = r.json()["data"]
        assert len(hits) == k
        assert all(h["text"] is None and "first_stage_score" in h for h in hits)
        assert "rerank_ms" in r.json()["timings"]
    assert (
        _search(client, query=KB_QUERY, mode=mode, k=1, rerank={}).json()["data"][0]["id"] == "dog"
    )


@pytest.mark.parametrize(
    ("stage", "extra", "status", "code"),
    [
        ({"candidates": 21}, {}, 422, "invalid_request"),
        ({"candidates": 0}, {}, 422, "invalid_request"),
        ({"candidates": "many"}, {}, 422, "invalid_request"),
        ({"candidates": True}, {}, 422, "invalid_request"),
        ({"model": "/etc"}, {}, 403, "forbidden"),
        ({"model": MISSING}, {}, 422, "model_not_available"),
        ({"bogus": 1}, {}, 422, "invalid_request"),
        ({}, {"query": "q" * 301}, 422, "invalid_request"),
        ({}, {"collection": "missing"}, 404, "collection_not_found"),
        ([], {}, 422, "invalid_request"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict | list) else str(v),
)
def test_a_bad_stage_gets_a_4xx_with_a_stable_code(
    client: httpx.Client, stage: Any, extra: dict[str, Any], status: int, code: str
) -> None:
    body = {"query": KB_QUERY, "k": 2, "rerank": stage, **extra}
    _error(_search(client, **body), status, code)


def test_no_hits_with_a_stage_is_an_empty_answer(client: httpx.Client) -> None:
    r = _search(client, query=KB_QUERY, k=3, filters={"none": "x"}, rerank={})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [] and r.json()["reranker"] == RERANKER


def test_metrics_count_the_rerank_stage(client: httpx.Client) -> None:
    _search(client, query=KB_QUERY, k=1, rerank={})
    text = client.get("/metrics").text
    assert 'quarry_search_stage_duration_seconds_count{stage="rerank"}' in text
