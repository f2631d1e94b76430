"""service.rerank and the rerank stage of service.search, with a tiny deterministic reranker
(no model weights): ordering, ties, top_n, limits, the allow-list, bad reranker output."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import Forbidden, InvalidRequest, PayloadTooLarge
from core.settings import EmbedderSettings, RerankSettings, Settings
from ranker.text import PACKAGED_RERANKERS, LoadOptions, TextReranker, register_packaged
from service import Container
from service.rerank import RerankerFailed, check_reranker_allowed, default_reranker, rerank
from service.search import Hit, RerankStage, SearchResult, search

TINY = "test-overlap"


Calls = list[tuple[str, list[str]]]


class Overlap:
    """Score: how many of the query's words the document contains (ties are common)."""

    kind = "test"

    def __init__(self, name: str, calls: Calls) -> None:
        self.name = name
        self.calls = calls

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        self.calls.append((query, list(documents)))
        words = set(query.lower().split())
        return np.array([len(words & set(d.lower().split())) for d in documents], dtype=np.float32)


class Broken:
    """Answers the wrong number of scores, or NaN."""

    kind = "test"

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.mode = name, mode

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        if self.mode == "short":
            return np.zeros(len(documents) - 1, dtype=np.float32)
        return np.full(len(documents), np.nan, dtype=np.float32)


@pytest.fixture
def calls() -> Iterator[Calls]:
    """The tiny rerankers, registered as packaged names for the test only; yields the
    (query, documents) of every ``score`` call of the overlap one."""
    seen: Calls = []

    def overlap(name: str, options: LoadOptions) -> TextReranker:
        return Overlap(name, seen)

    register_packaged(TINY, overlap)
    register_packaged("test-short", lambda name, _: Broken(name, "short"))
    register_packaged("test-nan", lambda name, _: Broken(name, "nan"))
    try:
        yield seen
    finally:
        for name in (TINY, "test-short", "test-nan"):
            PACKAGED_RERANKERS.pop(name, None)


def container(**rerank: Any) -> Container:
    """A container that never opens a database: the use case needs settings and the pool."""
    conf = RerankSettings(**{"default_model": TINY, **rerank})
    settings = Settings(
        data_dir=Path("/nonexistent"),
        env="test",
        rerank=conf,
        embedder=EmbedderSettings(preload=False, device="cpu"),
    )
    return Container(settings)


DOCS = [
    "Cats sleep all day.",  # 0: one word of the query
    "The dog chased the cat and the dog barked loudly",  # 1: dog, barked
    "Stock prices fell sharply.",  # 2: none
    "A dog barked at night.",  # 3: dog, barked (a tie with 1)
    "Dog.",  # 4: none ("dog." is not "dog")
]


def test_orders_by_score_with_ties_in_input_order(calls: Calls) -> None:
    out = rerank(container(), "dog barked cats", DOCS)
    assert out.model == TINY and out.kind == "test" and out.documents == 5
    assert out.indices == [1, 3, 0, 2, 4]
    assert out.scores == [2.0, 2.0, 1.0, 0.0, 0.0]
    assert out.timings["rerank_ms"] >= 0
    assert calls == [("dog barked cats", DOCS)]  # one call, documents as given


def test_ties_follow_input_order_whatever_it_is(calls: Calls) -> None:
    docs = ["same words", "other", "same words", "same words"]
    assert rerank(container(), "same", docs).indices == [0, 2, 3, 1]
    assert rerank(container(), "same", docs[::-1]).indices == [0, 1, 3, 2]


def test_top_n_keeps_the_best_and_is_capped_by_the_documents(calls: Calls) -> None:
    c = container()
    out = rerank(c, "dog barked cats", DOCS, top_n=2)
    assert out.indices == [1, 3] and out.scores == [2.0, 2.0]
    assert out.documents == 5  # all were scored
    assert rerank(c, "dog barked cats", DOCS, top_n=50).indices == [1, 3, 0, 2, 4]
    for bad in (0, -1):
        with pytest.raises(InvalidRequest, match="top_n"):
            rerank(c, "dog", DOCS, top_n=bad)


def test_the_query_and_documents_are_checked_against_the_limits(calls: Calls) -> None:
    c = container(max_documents=3, max_query_chars=10, max_document_chars=20)
    with pytest.raises(PayloadTooLarge, match=r"4 documents.*limit is 3"):
        rerank(c, "dog", ["a", "b", "c", "d"])
    with pytest.raises(InvalidRequest, match="No documents"):
        rerank(c, "dog", [])
    with pytest.raises(InvalidRequest, match="query is empty"):
        rerank(c, " \n\t", ["a"])
    with pytest.raises(InvalidRequest, match="11 characters; rerankers take at most 10"):
        rerank(c, "x" * 11, ["a"])
    with pytest.raises(InvalidRequest, match="Document 1 is empty"):
        rerank(c, "dog", ["a", "  "])
    with pytest.raises(InvalidRequest, match="Document 2 has 21 characters"):
        rerank(c, "dog", ["a", "b", "y" * 21])
    with pytest.raises(InvalidRequest, match="list of texts"):
        rerank(c, "dog", "one text")
    # At the limits exactly: accepted.
    assert rerank(c, "x" * 10, ["a", "b", "y" * 20]).documents == 3


def test_truncate_cuts_long_documents_instead_of_refusing(calls: Calls) -> None:
    c = container(max_document_chars=12)
    out = rerank(c, "dog", ["cat cat cat dog", "dog"], truncate=True)
    # "cat cat cat dog" is cut to "cat cat cat " (no dog): the short one wins.
    assert out.indices == [1, 0] and out.scores == [1.0, 0.0]
    assert calls[-1][1] == ["cat cat cat ", "dog"]


def test_the_allow_list(calls: Calls) -> None:
    c = container(default_model="embedder:all-MiniLM-L6-v2", allowed_models=["/srv/my-ce"])
    s = c.settings
    for ok in (
        "embedder:all-MiniLM-L6-v2",  # the default
        "/srv/my-ce",  # listed by the operator
        TINY,  # packaged
        "embedder:sentence-transformers/all-MiniLM-L6-v2",  # a packaged embedder's alias
    ):
        check_reranker_allowed(s, ok)
    for refused in ("/etc", "cross-encoder/ms-marco", "embedder:/tmp/x", "embedder:gpt2"):
        with pytest.raises(Forbidden, match="not enabled") as info:
            check_reranker_allowed(s, refused)
        assert info.value.details == {"model": refused}
    with pytest.raises(InvalidRequest, match="names no embedding model"):
        check_reranker_allowed(s, "embedder:")
    # The refusal names what is enabled.
    with pytest.raises(Forbidden) as info:
        check_reranker_allowed(s, "nope")
    assert "embedder:all-MiniLM-L6-v2" in info.value.message and TINY in info.value.message
    # An embedder the operator allows makes its bi-encoder reranker allowed too.
    wider = s.model_copy(update={"embedder": EmbedderSettings(allowed_models=["/srv/emb"])})
    check_reranker_allowed(wider, "embedder:/srv/emb")
    # An unallowed model is refused before anything loads.
    with pytest.raises(Forbidden):
        rerank(c, "dog", DOCS, model="/etc")
    assert c.rerankers.loaded() == []


def test_an_empty_default_means_the_default_embedder() -> None:
    c = container(default_model="")
    assert default_reranker(c.settings) == "embedder:all-MiniLM-L6-v2"
    check_reranker_allowed(c.settings, "embedder:all-MiniLM-L6-v2")


def test_a_reranker_that_answers_garbage_is_a_server_error(calls: Calls) -> None:
    c = container()
    with pytest.raises(RerankerFailed, match="2 scores for 3 documents") as info:
        rerank(c, "dog", ["a", "b", "c"], model="test-short")
    assert info.value.status == 500 and info.value.code == "reranker_error"
    with pytest.raises(RerankerFailed, match="not a finite number"):
        rerank(c, "dog", ["a", "b"], model="test-nan")


# --- the rerank stage of a search (the first stage is a stand-in) ------------------------------


class FirstStage:
    """Hits ``h0``, ``h1``, ... with decreasing scores; records the k it was asked for."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.calls: list[dict[str, Any]] = []

    def search(self, collection: str, query: str, **kw: Any) -> SearchResult:
        self.calls.append({"collection": collection, "query": query, **kw})
        hits = [
            Hit(f"h{i}", 1.0 - i / 100, text, {"i": i})
            for i, text in enumerate(self.texts[: kw["k"]])
        ]
        return SearchResult(hits, {"embed_ms": 1.0, "dense_ms": 2.0, "total_ms": 3.0})


def with_first_stage(c: Container, texts: list[str]) -> FirstStage:
    first = FirstStage(texts)
    c.__dict__["searcher"] = first  # the container's lazily built searcher, replaced
    return first


TEXTS = [f"filler text number {i}" for i in range(30)]
TEXTS[25] = "the dog barked"  # the best match sits deep in the first stage's list
TEXTS[7] = "a dog"


def test_the_stage_reranks_the_candidates_and_returns_k(calls: Calls) -> None:
    c = container()
    first = with_first_stage(c, TEXTS)
    out = search(c, "kb", "dog barked", k=3, mode="hybrid", rerank=RerankStage(candidates=30))
    assert first.calls == [
        {"collection": "kb", "query": "dog barked", "k": 30, "filters": None, "mode": "hybrid",
         "rrf_k": 60}
    ]  # fmt: skip
    assert [h.external_id for h in out.hits] == ["h25", "h7", "h0"]
    assert [h.score for h in out.hits] == [2.0, 1.0, 0.0]
    assert [h.first_stage_score for h in out.hits] == pytest.approx([0.75, 0.93, 1.0])
    assert out.hits[0].text == "the dog barked" and out.hits[0].metadata == {"i": 25}
    assert out.reranker == TINY
    assert set(out.timings) == {"embed_ms", "dense_ms", "rerank_ms", "total_ms"}
    assert len(calls[-1][1]) == 30


def test_the_stage_takes_max_of_k_and_candidates_and_100_by_default(calls: Calls) -> None:
    c = container()
    first = with_first_stage(c, TEXTS)
    # Fewer candidates than k: the first stage still fetches k.
    out = search(c, "kb", "dog barked", k=10, rerank=RerankStage(candidates=5))
    assert first.calls[-1]["k"] == 10 and len(out.hits) == 10
    assert out.hits[0].external_id == "h7"  # h25 is beyond the first stage's 10
    out = search(c, "kb", "dog barked", k=5, rerank=RerankStage())
    assert first.calls[-1]["k"] == 100 and out.hits[0].external_id == "h25"
    # A lower limit caps the default instead of refusing it.
    c = container(max_documents=20)
    first = with_first_stage(c, TEXTS)
    search(c, "kb", "dog barked", k=5, rerank=RerankStage())
    assert first.calls[-1]["k"] == 20


def test_without_the_stage_nothing_changes(calls: Calls) -> None:
    c = container()
    first = with_first_stage(c, TEXTS)
    out = search(c, "kb", "dog barked", k=3)
    assert first.calls[-1]["k"] == 3
    assert [h.external_id for h in out.hits] == ["h0", "h1", "h2"]
    assert all(h.first_stage_score is None for h in out.hits)
    assert out.reranker is None and "rerank_ms" not in out.timings
    assert out.timings["total_ms"] == 3.0


def test_the_stage_with_no_hits_reports_zero_time(calls: Calls) -> None:
    c = container()
    with_first_stage(c, [])
    out = search(c, "kb", "dog", k=3, rerank=RerankStage())
    assert out.hits == [] and out.timings["rerank_ms"] == 0.0


def test_the_stage_is_checked_before_the_first_stage_runs(calls: Calls) -> None:
    c = container(max_documents=50, max_query_chars=20)
    first = with_first_stage(c, TEXTS)
    for stage, error, match in (
        (RerankStage(candidates=51), InvalidRequest, "between 1 and 50"),
        (RerankStage(candidates=0), InvalidRequest, "between 1 and 50"),
        (RerankStage(model="/etc"), Forbidden, "not enabled"),
    ):
        with pytest.raises(error, match=match):
            search(c, "kb", "dog", k=3, rerank=stage)
    with pytest.raises(InvalidRequest, match="at most 20"):
        search(c, "kb", "d" * 21, k=3, rerank=RerankStage())
    assert first.calls == []


def test_the_stage_cuts_long_stored_texts_instead_of_failing(calls: Calls) -> None:
    c = container(max_document_chars=15)
    with_first_stage(c, ["x " * 50 + "dog", "dog at the start " + "y" * 100])
    out = search(c, "kb", "dog", k=2, rerank=RerankStage())
    assert [h.external_id for h in out.hits] == ["h1", "h0"]
    assert out.hits[1].text == "x " * 50 + "dog"  # the hit keeps its full text
