"""Corrupt segment files under a live app: a 5xx with its own code naming the collection,
a log line, ``/readyz`` reporting the collection degraded (the replica stays ready), and
``quarry verify --repair`` healing it. Leftover directories go at start-up."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api.conftest import wait_job

pytestmark = pytest.mark.slow

TEXTS = [
    f"Segment integrity document {i} about {w}." for i, w in enumerate("abcdefghijklmnopqrstuvwxy")
]


def _overwrite_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 1024, len(data)
    mid = len(data) // 2
    data[mid : mid + 8192] = os.urandom(8192)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "8 KB overwritten in index.faiss": ("index.faiss", _overwrite_middle),
    "truncated index.faiss": ("index.faiss", _truncate),
    "truncated ids.npy": ("ids.npy", _truncate),
}


@pytest.fixture
def app_client(sqlite_settings) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(sqlite_settings)) as client:
        yield client


def _fill(client: TestClient, name: str) -> None:
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    docs = [{"id": f"{name}-{i}", "text": t} for i, t in enumerate(TEXTS)]
    r = client.post(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert wait_job(client, r.json()["job"]["id"])["state"] == "succeeded"


def _segment_dir(client: TestClient, name: str) -> Path:
    c = client.app.state.quarry.container
    from core.db import session_scope
    from core.models import Collection, Segment

    with session_scope(c.sessions) as s:
        cid = s.scalar(select(Collection.id).where(Collection.name == name))
        seg = s.scalar(select(Segment.name).where(Segment.collection_id == cid, Segment.active))
    return c.segments_root / str(cid) / str(seg)


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_segment_is_a_server_error_and_degrades_only_its_collection(
    app_client: TestClient, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    _fill(app_client, "broken")
    _fill(app_client, "healthy")
    file, corrupt = CORRUPTIONS[case]
    corrupt(_segment_dir(app_client, "broken") / file)
    with caplog.at_level(logging.ERROR):
        for mode in ("dense", "lexical"):
            r = app_client.post(
                "/v1/search", json={"collection": "broken", "query": "document 3", "mode": mode}
            )
            assert r.status_code == 500, (case, mode, r.text)
            err = r.json()["error"]
            assert err["code"] == "segment_corrupt" and "broken" in err["message"]
            assert err["details"]["collection"] == "broken"
    assert any("segment" in rec.getMessage().lower() for rec in caplog.records), caplog.text
    ready = app_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert list(ready.json()["checks"]["degraded"]) == ["broken"]
    ok = app_client.post("/v1/search", json={"collection": "healthy", "query": "document 3"})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 10

    from service.integrity import verify

    c = app_client.app.state.quarry.container
    report = verify(c)
    assert report.checked == 2 and [p.collection for p in report.corrupt] == ["broken"]
    repaired = verify(c, "broken", repair=True)
    job_id = repaired.corrupt[0].repair_job
    assert job_id is not None
    assert wait_job(app_client, job_id)["state"] == "succeeded"
    assert verify(c).corrupt == []
    r = app_client.post("/v1/search", json={"collection": "broken", "query": "document 3", "k": 30})
    assert r.status_code == 200 and len(r.json()["data"]) == len(TEXTS)
    assert app_client.get("/readyz").json()["checks"]["degraded"] == {}


def test_leftovers_are_removed_at_start_up(sqlite_settings) -> None:
    from api.app import create_app

    sqlite_settings.jobs.cleanup_grace_s = 0.0
    with TestClient(create_app(sqlite_settings)) as client:
        _fill(client, "kept")
        seg = _segment_dir(client, "kept")
    root = seg.parent
    tmp = root / ".tmp-abandoned"
    orphan = root / "000000000001aaaaaaaaaaaaaaaaaaaa"
    stray = root.parent / "999"
    for path in (tmp, orphan, stray / "seg-1"):
        path.mkdir(parents=True)
        (path / "index.faiss").write_bytes(b"x")
    old = time.time() - 3600
    for path in (tmp, orphan, stray):
        os.utime(path, (old, old))
    with TestClient(create_app(sqlite_settings)) as client:
        assert not tmp.exists() and not orphan.exists() and not stray.exists()
        assert seg.exists()
        r = client.post("/v1/search", json={"collection": "kept", "query": "document 1"})
        assert r.status_code == 200 and r.json()["data"]
