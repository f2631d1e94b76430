"""Dense searches merged across concurrent requests answer exactly as one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.collections import create_collection
from core.db import session_scope
from core.documents import DocumentIn
from core.errors import CollectionNotFound
from core.settings import Settings
from service import Container, build
from service.ingest import ingest, wait_for_job

TOPICS = ("rivers", "engines", "proteins", "poetry", "markets", "storms", "glaciers", "bridges")
TEXTS = [
    f"Passage {i} is about {a} and the {b} of them."
    for i, (a, b) in enumerate(
        (a, b) for a in TOPICS for b in ("history", "design", "physics", "economics", "future")
    )
]
QUERIES = [f"what about {t} and their {b}" for t in TOPICS for b in ("design", "history", "law")]


def _container(tmp_path: Path, batching: bool) -> Container:
    from core.migrate import upgrade

    settings = Settings(data_dir=tmp_path)
    settings.index.segment_max_docs = 8  # several segments
    settings.serving.batching = batching
    upgrade(settings.resolved_database_url)
    return build(settings)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search")
    c = _container(path, batching=False)
    try:
        with session_scope(c.sessions) as s:
            create_collection(s, name="docs", embedder="all-MiniLM-L6-v2", dim=384)
        outcome = ingest(c, "docs", [DocumentIn(str(i), t) for i, t in enumerate(TEXTS)])
        wait_for_job(c, outcome.job.id, timeout_s=120)
        # A deletion leaves a tombstone the merged path must respect too.
        from core.collections import get_collection
        from core.documents import delete_documents

        with session_scope(c.sessions) as s:
            delete_documents(s, get_collection(s, "docs"), ["3"])
    finally:
        c.close()
    return path


@pytest.fixture
def pair(data_dir: Path) -> Iterator[tuple[Container, Container]]:
    one, merged = _container(data_dir, batching=False), _container(data_dir, batching=True)
    yield one, merged
    one.close()
    merged.close()


def _hits(c: Container, query: str, k: int) -> list[tuple[str, float]]:
    return [(h.external_id, round(h.score, 5)) for h in c.searcher.search("docs", query, k=k).hits]


def test_concurrent_dense_searches_are_merged_and_match_single_searches(pair) -> None:
    one, merged = pair
    ks = [1 + i % 12 for i in range(len(QUERIES))]
    expected = [_hits(one, q, k) for q, k in zip(QUERIES, ks, strict=True)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda qk: _hits(merged, *qk), zip(QUERIES, ks, strict=True)))
    assert got == expected
    assert all("3" not in [i for i, _ in hits] for hits in got)
    assert "search" in merged.serving.health()  # the searches went through the queue


def test_an_unknown_collection_fails_only_its_own_request(pair) -> None:
    _, merged = pair

    def run(i: int) -> object:
        try:
            return merged.searcher.search("nope" if i % 5 == 0 else "docs", QUERIES[i], k=3)
        except CollectionNotFound as exc:
            return exc

    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(run, range(20)))
    for i, r in enumerate(out):
        if i % 5 == 0:
            assert isinstance(r, CollectionNotFound)
        else:
            assert [h.external_id for h in r.hits] == [  # type: ignore[attr-defined]
                doc for doc, _ in _hits(merged, QUERIES[i], 3)
            ]
