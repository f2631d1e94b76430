"""Edges of the HTTP API: ids with "/", streamed bodies over the limit, the documented error
body, offline Swagger UI, blank and unstorable input (NUL, lone surrogates, NaN)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import wait_job

pytestmark = pytest.mark.slow

ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "422", "500", "503")
SLASH_DOCS = {
    "a/b/c": "The telescope observed a distant galaxy emitting strong radio waves.",
    "trailing/": "Simmer the tomato sauce with garlic and basil for twenty minutes.",
    "ü/é": "The striker scored twice in the second half to win the cup final.",
    "50%/x": "The central bank raised interest rates to curb persistent inflation.",
}


@pytest.fixture
def light_client(sqlite_settings) -> Iterator[TestClient]:
    """The real app without preloading a model, small body limit (4 KiB)."""
    from api.app import create_app

    sqlite_settings.embedder.preload = False
    sqlite_settings.limits.max_request_bytes = 4096
    with TestClient(create_app(sqlite_settings)) as c:
        yield c


def _error(r: Any, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def _utc(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, stamp
    return parsed


# -- 1. ids with "/" ---------------------------------------------------------------------------


def test_ids_with_slashes_are_searchable_fetchable_and_deletable(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "kb"})
    assert r.status_code == 201
    _utc(r.json()["created_at"])
    docs = [{"id": i, "text": t, "metadata": {"i": i}} for i, t in SLASH_DOCS.items()]
    accepted = client.post("/v1/collections/kb/documents", json={"documents": docs})
    assert accepted.status_code == 202 and accepted.json()["created"] == len(docs)
    job = wait_job(client, accepted.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    assert _utc(job["finished_at"]) >= _utc(job["created_at"])

    hits = client.post("/v1/search", json={"collection": "kb", "query": "radio telescope"})
    assert hits.json()["data"][0]["id"] == "a/b/c"
    # Numbers past 64 bits compare as numbers (they used to overflow SQLite: 500).
    search = {"collection": "kb", "query": "radio telescope", "mode": "hybrid"}
    r = client.post("/v1/search", json={**search, "filters": {"i": [10**30, "a/b/c"]}})
    assert r.status_code == 200 and [h["id"] for h in r.json()["data"]] == ["a/b/c"]
    _error(client.post("/v1/search", json={**search, "rrf_k": 10**400}), 422, "invalid_request")

    for doc_id, text in SLASH_DOCS.items():
        # "/" as is, or percent-encoded as %2F: the same document.
        for path in (quote(doc_id, safe="/"), quote(doc_id, safe="")):
            r = client.get(f"/v1/collections/kb/documents/{path}")
            assert r.status_code == 200, (path, r.text)
            body = r.json()
            assert (body["id"], body["text"], body["metadata"]) == (doc_id, text, {"i": doc_id})
            _utc(body["created_at"]), _utc(body["updated_at"])
    assert "%2F" in quote("a/b/c", safe="")
    _error(client.get("/v1/collections/kb/documents/a/b"), 404, "document_not_found")

    assert client.delete("/v1/collections/kb/documents/a/b/c").status_code == 204
    _error(client.get("/v1/collections/kb/documents/a/b/c"), 404, "document_not_found")
    _error(client.delete("/v1/collections/kb/documents/a%2Fb%2Fc"), 404, "document_not_found")
    encoded = quote("ü/é", safe="")
    assert client.delete(f"/v1/collections/kb/documents/{encoded}").status_code == 204
    r = client.post("/v1/collections/kb/documents/delete", json={"ids": ["trailing/", "nope/x"]})
    assert r.status_code == 200 and r.json() == {"deleted": 1}

    hits = client.post("/v1/search", json={"collection": "kb", "query": "radio telescope"})
    assert [h["id"] for h in hits.json()["data"]] == ["50%/x"]
    r = client.get(f"/v1/collections/kb/documents/{quote('50%/x', safe='/')}")
    assert r.status_code == 200 and r.json()["id"] == "50%/x"


# -- 2. request size ---------------------------------------------------------------------------


def _chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_streamed_and_declared_bodies_over_the_limit_are_413(light_client: TestClient) -> None:
    client = light_client
    json_type = {"content-type": "application/json"}
    big = json.dumps({"documents": [{"id": "big", "text": "x" * 5000}]}).encode()
    url = "/v1/collections/kb/documents"
    # No Content-Length: the limit is found while the body streams in.
    r = client.post(url, content=_chunks(big), headers=json_type)
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    error = _error(r, 413, "payload_too_large")
    assert "4096 bytes" in error["message"]
    # Declared by Content-Length: refused before the body is read.
    r = client.post(url, content=big, headers=json_type)
    assert r.request.headers["content-length"] == str(len(big))
    _error(r, 413, "payload_too_large")
    # The same body under the limit goes through the same path (404: no such collection).
    small = json.dumps({"documents": [{"id": "small", "text": "hello"}]}).encode()
    r = client.post(url, content=_chunks(small, 7), headers=json_type)
    _error(r, 404, "collection_not_found")


# -- 3. the documented error body --------------------------------------------------------------


def _operation(openapi: dict, path: str, method: str) -> Any:
    """The operation as schemathesis reads the documented schema (it validates answers)."""
    import schemathesis

    return schemathesis.openapi.from_dict(openapi)[path][method]


def test_openapi_documents_the_error_body_the_server_sends(light_client: TestClient) -> None:
    from api.schemas import ErrorResponse

    client = light_client
    r = client.get("/openapi.json")
    assert r.status_code == 200
    openapi = r.json()
    assert "HTTPValidationError" not in r.text and "ValidationError" not in r.text
    for name, schema in openapi["components"]["schemas"].items():
        assert "detail" not in schema.get("properties", {}), name
    operations = [
        (path, method, op) for path, item in openapi["paths"].items() for method, op in item.items()
    ]
    assert len(operations) >= 16
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, method, op in operations:
        for status in ERROR_STATUSES:
            if (path, status) == ("/readyz", "503"):
                continue  # readiness answers 503 with its own body, documented below
            content = op["responses"][status]["content"]
            assert content == {"application/json": {"schema": error_ref}}, (path, method, status)
    error_schema = openapi["components"]["schemas"]["ErrorResponse"]
    assert error_schema["required"] == ["error"]
    body_schema = openapi["components"]["schemas"]["ErrorBody"]
    assert set(body_schema["properties"]) == {"code", "message", "details"}

    # Real answers validate against what is documented for their status.
    search, embed = (
        _operation(openapi, "/v1/search", "POST"),
        _operation(openapi, "/v1/embed", "POST"),
    )
    answers = [
        (search, 422, client.post("/v1/search", json={"collection": "kb"})),
        (search, 422, client.post("/v1/search", json={"collection": "kb", "query": " "})),
        (search, 404, client.post("/v1/search", json={"collection": "missing", "query": "x"})),
        (embed, 413, client.post("/v1/embed", json={"inputs": ["x" * 5000]})),
    ]
    for operation, status, answer in answers:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/json"
        operation.validate_response(answer)
        ErrorResponse.model_validate(answer.json())
    details = answers[0][2].json()["error"]["details"]
    assert details["errors"][0]["loc"] == ["body", "query"]
    # ... and FastAPI's own error body would not.
    fastapi_body = httpx.Response(422, json={"detail": [{"msg": "x"}]}, request=answer.request)
    fastapi_body.elapsed = timedelta(0)
    with pytest.raises(Exception, match="required property"):
        search.validate_response(fastapi_body)


def test_openapi_documents_non_error_bodies_and_limits(light_client: TestClient) -> None:
    client = light_client
    openapi = client.get("/openapi.json").json()
    paths, schemas = openapi["paths"], openapi["components"]["schemas"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    ready = paths["/readyz"]["get"]["responses"]
    readiness = {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}
    assert ready["200"]["content"] == ready["503"]["content"] == readiness
    answer = client.get("/readyz")
    assert answer.status_code == 200
    _operation(openapi, "/readyz", "GET").validate_response(answer)
    assert "201" in paths["/v1/collections"]["post"]["responses"]
    assert "202" in paths["/v1/collections/{name}/documents"]["post"]["responses"]
    assert "204" in paths["/v1/collections/{name}/documents/{doc_id}"]["delete"]["responses"]

    limits = client.app.state.quarry.container.settings.limits
    search = schemas["SearchRequest"]["properties"]
    assert search["k"]["maximum"] == limits.max_k
    assert search["query"]["maxLength"] == limits.max_text_chars
    assert (
        schemas["DocumentsIngest"]["properties"]["documents"]["maxItems"] == limits.max_batch_docs
    )
    assert schemas["DocumentIn"]["properties"]["text"]["maxLength"] == limits.max_text_chars
    inputs = schemas["EmbedRequest"]["properties"]["inputs"]
    assert inputs["maxItems"] == limits.max_embed_inputs
    params = paths["/v1/collections/{name}/documents/{doc_id}"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("pattern") for p in params}["doc_id"] == "^[^\\u0000]*$"

    # Timestamps are documented as date-time and sent with their zone.
    collection = schemas["CollectionPublic"]["properties"]["created_at"]
    assert collection["format"] == "date-time"


def test_unknown_routes_and_methods_answer_json(light_client: TestClient) -> None:
    _error(light_client.get("/v1/nope"), 404, "not_found")
    r = light_client.put("/v1/search", json={})
    _error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


# -- 4. offline Swagger UI ---------------------------------------------------------------------


def test_swagger_ui_is_served_from_the_package(light_client: TestClient) -> None:
    client = light_client
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"https?://", html), html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"} <= set(assets)
    assert all(a.startswith("/docs/static/") for a in assets), assets
    assert '"validatorUrl": null' in html
    expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        kind = next(v for k, v in expected.items() if asset.endswith(k))
        assert kind in answer.headers["content-type"], (asset, answer.headers["content-type"])
    js = client.get("/docs/static/swagger-ui-bundle.js")
    assert len(js.content) > 100_000 and b"SwaggerUIBundle" in js.content
    css = client.get("/docs/static/swagger-ui.css")
    assert b".swagger-ui" in css.content


# -- 5. blank and unstorable input -------------------------------------------------------------


def test_whitespace_only_queries_and_inputs_are_422(light_client: TestClient) -> None:
    client = light_client
    for query in ("   ", "\t\n ", "\u3000"):
        r = client.post("/v1/search", json={"collection": "missing", "query": query})
        assert "empty" in _error(r, 422, "invalid_request")["message"]
    _error(client.post("/v1/search", json={"collection": "x", "query": ""}), 422, "invalid_request")
    for inputs in (["   "], ["fine", " \n"], [""]):
        _error(client.post("/v1/embed", json={"inputs": inputs}), 422, "invalid_request")
    for value in ("  ", ["ok", "\t"], []):
        r = client.post("/v1/embeddings", json={"input": value})
        _error(r, 422, "invalid_request")


def _raw(client: TestClient, url: str, text: str) -> Any:
    return client.post(url, content=text.encode(), headers={"content-type": "application/json"})


def test_unstorable_strings_and_numbers_are_422(light_client: TestClient) -> None:
    client = light_client
    docs_url = "/v1/collections/kb/documents"
    bad_documents = [
        {"id": "a\x00b", "text": "x"},
        {"id": "a", "text": "x\x00"},
        {"id": "a", "text": "x", "metadata": {"k\x00": 1}},
        {"id": "a", "text": "x", "metadata": {"k": ["ok", {"deep": "v\x00"}]}},
    ]
    for doc in bad_documents:
        r = client.post(docs_url, json={"documents": [doc]})
        assert "NUL" in _error(r, 422, "invalid_request")["message"], doc
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["k"] = {}
        node = node["k"]
    r = client.post(docs_url, json={"documents": [{"id": "a", "text": "x", "metadata": deep}]})
    assert "nested deeper" in _error(r, 422, "invalid_request")["message"]
    # Python's json reads lone surrogates, NaN and 1e400 (infinity): refused before storage.
    for raw in (
        '{"documents": [{"id": "\\ud800", "text": "x"}]}',
        '{"documents": [{"id": "a", "text": "x\\udfff"}]}',
        '{"documents": [{"id": "a", "text": "x", "metadata": {"\\ud800": 1}}]}',
        '{"documents": [{"id": "a", "text": "x", "metadata": {"n": NaN}}]}',
        '{"documents": [{"id": "a", "text": "x", "metadata": {"n": [1e400]}}]}',
    ):
        _error(_raw(client, docs_url, raw), 422, "invalid_request")
    _error(client.get("/v1/collections/kb/documents/a%00b"), 422, "invalid_request")
    _error(client.delete("/v1/collections/kb/documents/a%00b"), 422, "invalid_request")
    r = client.post("/v1/collections/kb/documents/delete", json={"ids": ["a\x00"]})
    _error(r, 422, "invalid_request")

    search = {"collection": "kb", "query": "x"}
    for body in (
        {**search, "query": "q\x00"},
        {**search, "filters": {"k": "v\x00"}},
        {**search, "filters": {"k": {"nested": 1}}},
        {**search, "rrf_k": 10**7},
    ):
        _error(client.post("/v1/search", json=body), 422, "invalid_request")
    for raw in (
        '{"collection": "kb", "query": "x", "filters": {"k": NaN}}',
        '{"collection": "kb", "query": "x", "filters": {"k": [1, Infinity]}}',
        '{"collection": "kb", "query": "x\\ud800"}',
    ):
        _error(_raw(client, "/v1/search", raw), 422, "invalid_request")
    _error(client.post("/v1/embed", json={"inputs": ["a\x00"]}), 422, "invalid_request")
    _error(_raw(client, "/v1/embed", '{"inputs": ["\\udc00"]}'), 422, "invalid_request")

    # Collection names: the whole name must match (Python's "$" would allow a final newline).
    for name in ("kb\n", "kb\x00", "-kb", "k" * 129):
        r = client.post("/v1/collections", json={"name": name})
        assert "Invalid collection name" in _error(r, 422, "invalid_request")["message"]
    assert client.get("/v1/collections").json()["count"] == 0
