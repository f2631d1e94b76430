from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(sqlite_settings) -> Iterator[TestClient]:
    """The real app on SQLite with in-process jobs and the real MiniLM model."""
    from api.app import create_app

    with TestClient(create_app(sqlite_settings)) as c:
        yield c


def wait_job(client: TestClient, job_id: str) -> dict:
    """Wait for the in-process dispatcher, then return the job as the API shows it."""
    client.app.state.quarry.container.dispatcher.wait(timeout=300)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["state"] in ("succeeded", "failed", "cancelled"), body
    return body
