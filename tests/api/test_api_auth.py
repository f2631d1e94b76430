"""Auth fails closed (issue 10): every route of the app against every kind of caller, per-
collection grants, the last key revoked, ``mode=on`` without keys, prod refusals, and a
revocation reaching two real server processes within a second."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.routing import Mount

from core.db import make_engine, make_session_factory, session_scope
from core.errors import QuarryError
from core.migrate import upgrade
from core.settings import AuthSettings, EmbedderSettings, Settings
from service.keys import create_key, revoke_key

ROOT = Path(__file__).resolve().parents[2]

OPEN, READ, WRITE, ADMIN = "open", "read", "write", "admin"

# The scope every route needs, with metrics and docs keyed (QUARRY_AUTH__OPEN_METRICS=false,
# QUARRY_AUTH__OPEN_DOCS=false; both are open by default, see test_open_by_default). A route
# missing here fails test_the_table_covers_every_route: decide its scope before shipping it.
SCOPE_TABLE: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,  # probes carry no key; degraded names need a read key
    ("GET", "/metrics"): READ,
    ("GET", "/openapi.json"): READ,
    ("GET", "/docs"): READ,
    ("MOUNT", "/docs/static"): OPEN,  # Swagger UI's own JS and CSS
    ("POST", "/v1/collections"): WRITE,
    ("GET", "/v1/collections"): READ,
    ("GET", "/v1/collections/{name}"): READ,
    ("DELETE", "/v1/collections/{name}"): ADMIN,
    ("POST", "/v1/collections/{name}/compact"): WRITE,
    ("POST", "/v1/collections/{name}/documents"): WRITE,
    ("GET", "/v1/collections/{name}/documents/{doc_id:path}"): READ,
    ("DELETE", "/v1/collections/{name}/documents/{doc_id:path}"): WRITE,
    ("POST", "/v1/collections/{name}/documents/delete"): WRITE,
    ("GET", "/v1/jobs/{job_id}"): READ,
    ("POST", "/v1/search"): READ,
    ("POST", "/v1/rerank"): READ,
    ("POST", "/v1/embed"): READ,
    ("POST", "/v1/embeddings"): READ,
    ("POST", "/v1/items"): WRITE,
    ("GET", "/v1/items/{item_id:path}"): READ,
    ("POST", "/v1/events"): WRITE,
    ("GET", "/v1/users/{user_id:path}/events"): READ,
    ("POST", "/v1/ctr/score"): READ,
    ("GET", "/v1/ctr/models"): READ,
}
KEYED = [route for route, scope in SCOPE_TABLE.items() if scope != OPEN]

# The callers of the matrix: no key, a key nobody issued, a revoked key, and one key per scope.
CALLERS = ("none", "wrong", "revoked", "read", "write", "admin")
SCOPES_OF = {"read": {"read"}, "write": {"write"}, "admin": {"admin"}}  # pure scopes


def _auth_settings() -> AuthSettings:
    return AuthSettings(open_metrics=False, open_docs=False)


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, included routers flattened; a mount as ("MOUNT",
    path). Any other kind of route is listed under its type name, so that it cannot slip past
    the table either."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.12x
    found: set[tuple[str, str]] = set()
    for entry in flatten(app.routes) if flatten else app.routes:
        route = getattr(entry, "original_route", entry)
        path = getattr(entry, "path", None) or repr(entry)
        if isinstance(route, Mount):
            found.add(("MOUNT", path))
        elif isinstance(route, APIRoute):
            found.update((m, path) for m in getattr(entry, "methods", ()) if m != "HEAD")
        else:
            found.add((type(route).__name__, path))
    return found


def test_the_table_covers_every_route() -> None:
    from api.app import create_app

    settings = Settings(data_dir=Path("/nonexistent"), env="test", auth=_auth_settings())
    routes = app_routes(create_app(settings))  # no lifespan: nothing is opened
    assert routes - SCOPE_TABLE.keys() == set(), "routes without an expected scope"
    assert SCOPE_TABLE.keys() - routes == set(), "table entries for routes that are gone"
    assert set(REQUESTS) == set(SCOPE_TABLE)


# --- requests, one per route -----------------------------------------------------------------


@dataclass
class Req:
    method: str
    url: str
    json: Any = None
    ok: tuple[int, ...] = (200,)


@dataclass
class Ctx:
    """What a request needs. ``prepare``: create what the request acts on first (only when the
    caller is expected to get through; the 401 checks send requests as they are)."""

    client: TestClient
    admin: dict[str, str]
    collection: str = "kb"
    victim: str = "victim"  # the collection DELETE /v1/collections/{name} removes
    job_id: str = "no-such-job"
    prepare: bool = False
    counter: Iterator[int] = field(default_factory=itertools.count)

    def make_collection(self, name: str) -> None:
        r = self.client.post("/v1/collections", json={"name": name}, headers=self.admin)
        assert r.status_code in (201, 409), r.text

    def make_document(self, doc_id: str) -> None:
        r = self.client.post(
            f"/v1/collections/{self.collection}/documents",
            json={"documents": [{"id": doc_id, "text": "A document to delete."}]},
            headers=self.admin,
        )
        assert r.status_code == 202, r.text


def _create_collection(ctx: Ctx) -> Req:
    return Req("POST", "/v1/collections", {"name": f"made-{next(ctx.counter)}"}, (201,))


def _delete_collection(ctx: Ctx) -> Req:
    if ctx.prepare:
        ctx.make_collection(ctx.victim)
    return Req("DELETE", f"/v1/collections/{ctx.victim}", ok=(204,))


def _delete_document(ctx: Ctx) -> Req:
    doc_id = f"gone/{next(ctx.counter)}"
    if ctx.prepare:
        ctx.make_document(doc_id)
    return Req("DELETE", f"/v1/collections/{ctx.collection}/documents/{doc_id}", ok=(204,))


def _ingest(ctx: Ctx) -> Req:
    doc = {"id": f"new-{next(ctx.counter)}", "text": "Fresh text about telescopes."}
    return Req("POST", f"/v1/collections/{ctx.collection}/documents", {"documents": [doc]}, (202,))


REQUESTS: dict[tuple[str, str], Callable[[Ctx], Req]] = {
    ("GET", "/healthz"): lambda ctx: Req("GET", "/healthz"),
    ("GET", "/readyz"): lambda ctx: Req("GET", "/readyz"),
    ("GET", "/metrics"): lambda ctx: Req("GET", "/metrics"),
    ("GET", "/openapi.json"): lambda ctx: Req("GET", "/openapi.json"),
    ("GET", "/docs"): lambda ctx: Req("GET", "/docs"),
    ("MOUNT", "/docs/static"): lambda ctx: Req("GET", "/docs/static/swagger-ui.css"),
    ("POST", "/v1/collections"): _create_collection,
    ("GET", "/v1/collections"): lambda ctx: Req("GET", "/v1/collections"),
    ("GET", "/v1/collections/{name}"): lambda ctx: Req("GET", f"/v1/collections/{ctx.collection}"),
    ("DELETE", "/v1/collections/{name}"): _delete_collection,
    ("POST", "/v1/collections/{name}/compact"): lambda ctx: Req(
        "POST", f"/v1/collections/{ctx.collection}/compact", {}, (202,)
    ),
    ("POST", "/v1/collections/{name}/documents"): _ingest,
    ("GET", "/v1/collections/{name}/documents/{doc_id:path}"): lambda ctx: Req(
        "GET", f"/v1/collections/{ctx.collection}/documents/d1"
    ),
    ("DELETE", "/v1/collections/{name}/documents/{doc_id:path}"): _delete_document,
    ("POST", "/v1/collections/{name}/documents/delete"): lambda ctx: Req(
        "POST", f"/v1/collections/{ctx.collection}/documents/delete", {"ids": ["none"]}
    ),
    ("GET", "/v1/jobs/{job_id}"): lambda ctx: Req("GET", f"/v1/jobs/{ctx.job_id}"),
    ("POST", "/v1/search"): lambda ctx: Req(
        "POST", "/v1/search", {"collection": ctx.collection, "query": "telescope", "k": 2}
    ),
    ("POST", "/v1/rerank"): lambda ctx: Req(
        "POST", "/v1/rerank", {"query": "telescope", "documents": ["A galaxy.", "Rates fell."]}
    ),
    ("POST", "/v1/embed"): lambda ctx: Req("POST", "/v1/embed", {"inputs": ["hello"]}),
    ("POST", "/v1/embeddings"): lambda ctx: Req("POST", "/v1/embeddings", {"input": "hello"}),
    ("POST", "/v1/items"): lambda ctx: Req("POST", "/v1/items", {"items": [{"id": "it/1"}]}),
    # 404 for an item never stored: the key got through.
    ("GET", "/v1/items/{item_id:path}"): lambda ctx: Req("GET", "/v1/items/it/1", ok=(200, 404)),
    ("POST", "/v1/events"): lambda ctx: Req(
        "POST", "/v1/events", {"events": [{"user_id": "u/1", "item_id": "it/1"}]}
    ),
    ("GET", "/v1/users/{user_id:path}/events"): lambda ctx: Req("GET", "/v1/users/u/1/events"),
    # No CTR model is deployed here: 404 ctr_model_not_found once the key got through.
    ("POST", "/v1/ctr/score"): lambda ctx: Req(
        "POST", "/v1/ctr/score", {"user_id": "u/1", "items": ["it/1"]}, (404,)
    ),
    ("GET", "/v1/ctr/models"): lambda ctx: Req("GET", "/v1/ctr/models"),
}


def send(ctx: Ctx, route: tuple[str, str], headers: dict[str, str]) -> Any:
    req = REQUESTS[route](ctx)
    return ctx.client.request(req.method, req.url, json=req.json, headers=headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def db(settings: Settings) -> Iterator[Session]:
    """One transaction on the app's database, from outside the app (as the CLI would)."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            yield s
    finally:
        engine.dispose()


# --- the matrix (one app for the module, the real MiniLM model) --------------------------------


@dataclass
class World:
    ctx: Ctx
    headers: dict[str, dict[str, str]]  # per caller
    scoped: dict[str, str]  # a key restricted to kb and scratch (every scope)
    other_job: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from api.app import create_app

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("auth") / "quarry", env="test", auth=_auth_settings()
    )
    upgrade(settings.resolved_database_url)
    with db(settings) as s:
        keys = {name: create_key(s, name, ",".join(SCOPES_OF[name])) for name in SCOPES_OF}
        revoked = create_key(s, "revoked", "read,write,admin")
        scoped = create_key(s, "scoped", "read,write,admin", ["kb", "scratch"])
        revoke_key(s, "revoked")
    headers = {
        "none": {},
        "wrong": bearer("qry_" + "x" * 43),
        "revoked": bearer(revoked),
        **{name: bearer(key) for name, key in keys.items()},
    }
    with TestClient(create_app(settings)) as client:
        admin = headers["admin"]
        jobs = {}
        for name in ("kb", "other"):
            r = client.post("/v1/collections", json={"name": name}, headers=admin)
            assert r.status_code == 201, r.text
            r = client.post(
                f"/v1/collections/{name}/documents",
                json={"documents": [{"id": "d1", "text": "The telescope saw a galaxy."}]},
                headers=admin,
            )
            assert r.status_code == 202, r.text
            jobs[name] = r.json()["job"]["id"]
        client.app.state.quarry.container.dispatcher.wait(timeout=300)  # type: ignore[attr-defined]
        ctx = Ctx(client=client, admin=admin, job_id=jobs["kb"])
        yield World(ctx, headers, bearer(scoped), jobs["other"])


def expected(scope: str, caller: str) -> str:
    if scope == OPEN:
        return "allowed"
    if caller in ("none", "wrong", "revoked"):
        return "401"
    granted = SCOPES_OF[caller]
    return "allowed" if scope in granted or "admin" in granted else "403"


def outcome(r: Any, ok: tuple[int, ...]) -> str:  # a TestClient response
    if r.status_code == 401:
        assert r.json()["error"]["code"] == "unauthorized", r.text
        return "401"
    if r.status_code == 403:
        assert r.json()["error"]["code"] == "forbidden", r.text
        return "403"
    return "allowed" if r.status_code in ok else f"unexpected {r.status_code}: {r.text[:200]}"


@pytest.mark.slow
@pytest.mark.parametrize("route", list(SCOPE_TABLE), ids=" ".join)
def test_every_route_against_every_caller(world: World, route: tuple[str, str]) -> None:
    scope = SCOPE_TABLE[route]
    got, want = {}, {}
    for caller in CALLERS:
        want[caller] = expected(scope, caller)
        world.ctx.prepare = want[caller] == "allowed"
        req = REQUESTS[route](world.ctx)
        r = world.ctx.client.request(
            req.method, req.url, json=req.json, headers=world.headers[caller]
        )
        got[caller] = outcome(r, req.ok)
    assert got == want


@pytest.mark.slow
def test_a_key_for_some_collections_gets_403_on_the_others(world: World) -> None:
    ctx = Ctx(client=world.ctx.client, admin=world.ctx.admin, counter=world.ctx.counter)
    per_collection = [route for route in SCOPE_TABLE if "{name}" in route[1]]
    per_collection += [("GET", "/v1/jobs/{job_id}"), ("POST", "/v1/search")]
    assert len(per_collection) == 9  # 7 with the name in the path, jobs, search
    for coll, victim, job_id, allowed in (
        ("other", "other", world.other_job, False),
        ("kb", "scratch", world.ctx.job_id, True),
    ):
        ctx.collection, ctx.victim, ctx.job_id = coll, victim, job_id
        for route in per_collection:
            ctx.prepare = True
            req = REQUESTS[route](ctx)
            r = ctx.client.request(req.method, req.url, json=req.json, headers=world.scoped)
            want = "allowed" if allowed else "403"
            assert outcome(r, req.ok) == want, (coll, route, r.status_code, r.text)
            if not allowed:
                assert "no access to collection 'other'" in r.json()["error"]["message"], r.text

    client, scoped = ctx.client, world.scoped
    # Creating: only the collections of the grant; listing: only those are shown.
    r = client.post("/v1/collections", json={"name": "elsewhere"}, headers=scoped)
    assert r.status_code == 403, r.text
    r = client.post("/v1/collections", json={"name": "scratch"}, headers=scoped)
    assert r.status_code == 201, r.text
    listed = client.get("/v1/collections", headers=scoped).json()
    names = {c["name"] for c in listed["data"]}
    assert names == {"kb", "scratch"} and listed["count"] == 2
    everything = {
        c["name"] for c in client.get("/v1/collections", headers=ctx.admin).json()["data"]
    }
    assert {"kb", "other", "scratch"} <= everything
    assert client.delete("/v1/collections/scratch", headers=scoped).status_code == 204
    # Routes that name no collection stay open to the key's scopes.
    assert client.post("/v1/embed", json={"inputs": ["x"]}, headers=scoped).status_code == 200
    assert client.get("/v1/collections/other").status_code == 401


# --- fast apps: no model is loaded ------------------------------------------------------------


def _fast(settings: Settings, **update: Any) -> Settings:
    """``settings`` with keyed metrics and docs and no model preloaded at start-up."""
    update.setdefault("auth", _auth_settings())
    return settings.model_copy(
        update={"embedder": EmbedderSettings(preload=False, device="cpu"), **update}
    )


def _dummy_ctx(client: TestClient) -> Ctx:
    return Ctx(client=client, admin={})


def test_revoking_the_last_key_leaves_every_keyed_route_closed(sqlite_settings: Settings) -> None:
    from api.app import create_app

    settings = _fast(sqlite_settings)
    assert settings.auth.mode == "auto" and not settings.api_keys
    with db(settings) as s:
        key = create_key(s, "only", "read,write,admin")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/collections", headers=bearer(key)).status_code == 200
        assert client.get("/v1/collections").status_code == 401
        with db(settings) as s:
            revoke_key(s, "only")
        deadline = time.monotonic() + 1.0
        while client.get("/v1/collections", headers=bearer(key)).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key still works after 1 s"
            time.sleep(0.02)
        _all_keyed_routes_refuse(client, key)
    with TestClient(create_app(settings)) as client:  # a restart (a new process) too
        _all_keyed_routes_refuse(client, key)


def _all_keyed_routes_refuse(client: TestClient, key: str) -> None:
    ctx = _dummy_ctx(client)
    for route in KEYED:
        for headers in ({}, bearer(key), bearer("qry_wrong")):
            r = send(ctx, route, headers)
            assert r.status_code == 401, (route, headers, r.text)
    assert client.get("/healthz").status_code == 200


def test_mode_on_without_any_key_refuses_every_keyed_route(sqlite_settings: Settings) -> None:
    from api.app import create_app

    settings = _fast(
        sqlite_settings, auth=AuthSettings(mode="on", open_metrics=False, open_docs=False)
    )
    with TestClient(create_app(settings)) as client:
        ctx = _dummy_ctx(client)
        for route in KEYED:
            for headers in ({}, bearer("qry_anything")):
                r = send(ctx, route, headers)
                assert r.status_code == 401, (route, r.text)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_mode_auto_is_open_only_before_the_first_key(sqlite_settings: Settings) -> None:
    from api.app import create_app

    settings = _fast(sqlite_settings)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/collections").status_code == 200
        with db(settings) as s:
            create_key(s, "first", "read")
        deadline = time.monotonic() + 1.0
        while client.get("/v1/collections").status_code != 401:
            assert time.monotonic() < deadline, "a new key did not close the API within 1 s"
            time.sleep(0.02)


def test_mode_off_is_open_outside_prod(sqlite_settings: Settings) -> None:
    from api.app import create_app

    settings = _fast(sqlite_settings, auth=AuthSettings(mode="off"))
    with db(settings) as s:
        create_key(s, "ignored", "read")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/collections").status_code == 200
        assert client.delete("/v1/collections/none").status_code == 404  # past auth


def test_open_by_default(sqlite_settings: Settings) -> None:
    """Default settings: probes, metrics and docs are open; the API is keyed."""
    from api.app import create_app

    settings = sqlite_settings.model_copy(update={"embedder": EmbedderSettings(preload=False)})
    assert settings.auth.open_metrics and settings.auth.open_docs
    with db(settings) as s:
        create_key(s, "k", "read")
    with TestClient(create_app(settings)) as client:
        for url in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert client.get(url).status_code == 200, url
        assert client.get("/docs/static/swagger-ui.css").status_code == 200
        assert client.get("/v1/collections").status_code == 401


def test_readyz_stays_open_but_names_degraded_collections_only_to_their_readers(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.app import create_app
    from core.collections import create_collection

    settings = _fast(sqlite_settings)
    with db(settings) as s:
        ids = {
            name: create_collection(s, name=name, embedder="all-MiniLM-L6-v2", dim=384).id
            for name in ("kb", "secret")
        }
        reader = create_key(s, "reader", "read")
        kb_reader = create_key(s, "kb-reader", "read", ["kb"])
        writer = create_key(s, "writer", "write")
    with TestClient(create_app(settings)) as client:
        segments = client.app.state.quarry.container.segments  # type: ignore[attr-defined]
        broken = {ids["kb"]: "kb: checksum mismatch", ids["secret"]: "secret: truncated"}
        monkeypatch.setattr(segments, "degraded", lambda: dict(broken))

        def degraded(headers: dict[str, str]) -> dict[str, str]:
            r = client.get("/readyz", headers=headers)
            assert r.status_code == 200, r.text
            return dict(r.json()["checks"]["degraded"])

        hidden = degraded({})
        assert list(hidden) == ["*"] and hidden["*"].startswith("2 collection(s)")
        for headers in ({}, bearer("qry_wrong"), bearer(writer)):
            assert degraded(headers) == hidden
        assert degraded(bearer(reader)) == {
            "kb": "kb: checksum mismatch",
            "secret": "secret: truncated",
        }
        mine = degraded(bearer(kb_reader))
        assert mine["kb"] == "kb: checksum mismatch" and "secret" not in mine
        assert mine["*"].startswith("1 collection(s)")


def test_prod_refuses_auth_mode_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = "k" * 32
    with pytest.raises(ValidationError, match="QUARRY_AUTH__MODE=off"):
        Settings(env="prod", api_keys=[key], auth=AuthSettings(mode="off"))
    monkeypatch.setenv("QUARRY_ENV", "prod")
    monkeypatch.setenv("QUARRY_AUTH__MODE", "off")
    monkeypatch.setenv("QUARRY_API_KEYS", key)
    monkeypatch.setenv("QUARRY_DATA_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match="not allowed with QUARRY_ENV=prod"):
        Settings()
    monkeypatch.setenv("QUARRY_AUTH__MODE", "on")
    assert Settings().auth.mode == "on"
    monkeypatch.setenv("QUARRY_ENV", "dev")
    monkeypatch.setenv("QUARRY_AUTH__MODE", "off")
    assert Settings().auth.mode == "off"


def test_prod_without_an_active_key_refuses_to_start(sqlite_settings: Settings) -> None:
    from api.app import create_app

    settings = _fast(sqlite_settings, env="prod")
    with (
        pytest.raises(QuarryError, match="quarry keys create NAME"),
        TestClient(create_app(settings)),
    ):
        pass
    with db(settings) as s:
        create_key(s, "gone", "read")
        revoke_key(s, "gone")
    # A revoked key is no key.
    with (
        pytest.raises(QuarryError, match="QUARRY_ENV=prod needs"),
        TestClient(create_app(settings)),
    ):
        pass
    with db(settings) as s:
        key = create_key(s, "live", "read")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/collections").status_code == 401
        assert client.get("/v1/collections", headers=bearer(key)).status_code == 200
    static = _fast(sqlite_settings, env="prod", api_keys=["s" * 32])
    with TestClient(create_app(static)) as client:  # a static key is enough, too
        assert client.get("/v1/collections", headers=bearer("s" * 32)).status_code == 200


# --- two real server processes -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.p = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.p.poll()}) ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()


def _wait_refused(
    servers: list[str], headers: dict[str, str], since: float, limit: float = 3.0
) -> dict[str, float]:
    """Poll every server until it answers 401; the seconds each took after ``since``."""
    took: dict[str, float] = {}
    with httpx.Client(timeout=2) as http:
        while len(took) < len(servers) and time.monotonic() - since < limit:
            for base in servers:
                if base not in took:
                    r = http.get(f"{base}/v1/collections", headers=headers)
                    if r.status_code == 401:
                        took[base] = time.monotonic() - since
                    else:
                        assert r.status_code == 200, r.text
    return took


def _keep_using(servers: list[str], headers: dict[str, str], stop: threading.Event) -> None:
    with httpx.Client(timeout=2) as http:
        while not stop.is_set():
            for base in servers:
                http.get(f"{base}/v1/collections", headers=headers)
            time.sleep(0.02)


@pytest.mark.slow
def test_a_revocation_reaches_two_server_processes_within_a_second(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp_path / "data"),
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "QUARRY_EMBEDDER__PRELOAD": "false",
        "HF_HUB_OFFLINE": "1",
    }
    for var in ("QUARRY_DATABASE_URL", "QUARRY_BROKER_URL", "QUARRY_API_KEYS", "QUARRY_ENV"):
        env.pop(var, None)
    for var in ("QUARRY_AUTH__MODE", "QUARRY_AUTH__CACHE_S"):
        env.pop(var, None)  # the defaults: auto, 0.5 s

    def quarry(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out

    quarry("db", "upgrade")
    ports = [_free_port(), _free_port()]
    procs = [
        Proc(f"api{i}", [sys.executable, "-m", "cli", "serve", "--port", str(p), "--no-migrate"],
             env, tmp_path)
        for i, p in enumerate(ports)
    ]  # fmt: skip
    servers = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 120
        for proc, base in zip(procs, servers, strict=True):
            while True:
                if proc.p.poll() is not None:
                    pytest.fail("server exited early\n" + proc.tail())
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("server never answered\n" + proc.tail())
                time.sleep(0.2)
        for base in servers:  # no key ever configured: open
            assert httpx.get(f"{base}/v1/collections").status_code == 200

        key = quarry("keys", "create", "ci", "--scopes", "read").stdout.strip()
        created = time.monotonic()
        took = _wait_refused(servers, {}, created)
        assert set(took) == set(servers) and max(took.values()) <= 1.0, took  # now keyed
        for base in servers:
            r = httpx.get(f"{base}/v1/collections", headers=bearer(key))
            assert r.status_code == 200, r.text  # and the grant is cached now

        # Keep both servers using the key while the revoke runs, so that each holds a grant
        # cached moments before the commit: the worst case for a stale cache.
        stop = threading.Event()
        hammer = threading.Thread(target=_keep_using, args=(servers, bearer(key), stop))
        hammer.start()
        try:
            quarry("keys", "revoke", "ci")
            revoked = time.monotonic()
        finally:
            stop.set()
            hammer.join()
        took = _wait_refused(servers, bearer(key), revoked)
        print(f"revoked key refused after {took} s")
        assert set(took) == set(servers), f"still accepted after 3 s: {took}"
        assert max(took.values()) <= 1.0, took
        for base in servers:  # and for good: the last key revoked never reopens the API
            for headers in (bearer(key), {}):
                assert httpx.get(f"{base}/v1/collections", headers=headers).status_code == 401
    finally:
        for proc in procs:
            proc.stop()
