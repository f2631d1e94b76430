"""Retrieval evaluation: the query loop (fake searcher) and end to end through ingest + search."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.datasets import load_beir
from core.errors import InvalidRequest
from core.settings import Settings
from evaluation.retrieval import check_mode, latency_stats, search_queries


@dataclass
class _Hit:
    external_id: str
    score: float
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Result:
    hits: list[_Hit]
    timings: dict[str, float]


class FakeSearcher:
    """Returns fixed hits per query text and records the calls."""

    def __init__(self, hits: dict[str, list[tuple[str, float]]]) -> None:
        self.hits = hits
        self.calls: list[dict[str, Any]] = []

    def search(self, collection: str, query: str, **kwargs: Any) -> _Result:
        self.calls.append({"collection": collection, "query": query, **kwargs})
        found = [_Hit(d, s) for d, s in self.hits.get(query, [])][: kwargs["k"]]
        return _Result(found, {"lexical_ms": 1.0, "total_ms": 2.0})


def test_search_queries_keeps_service_order(tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir)
    searcher = FakeSearcher(
        {
            "volcano eruption lava": [("d1", 0.5), ("d2", 0.5), ("d1", 0.1)],
            "how to bake bread": [("d3", 2.0)],
        }
    )
    run, stats = search_queries(
        searcher,  # type: ignore[arg-type]
        "tiny",
        ds.queries,
        mode="lexical",
        k=10,
        rrf_k=30,
        show_progress=False,
    )
    assert list(run) == ["q1", "q2", "q3"]
    assert list(run["q1"]) == ["d1", "d2"] and run["q1"]["d1"] == 0.5  # first hit wins
    assert run["q3"] == {}
    assert len(searcher.calls) == 4  # one warm-up + three queries
    assert searcher.calls[-1] == {
        "collection": "tiny",
        "query": ds.queries["q3"],
        "k": 10,
        "mode": "lexical",
        "rrf_k": 30,
    }
    assert stats["stage_lexical_ms"] == 1.0 and stats["latency_p95_ms"] >= 0.0


def test_latency_stats() -> None:
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["latency_median_ms"] == 3.0 and stats["latency_max_ms"] == 100.0
    assert stats["latency_p95_ms"] == pytest.approx(80.8)
    assert latency_stats([]) == {}


def test_check_mode() -> None:
    assert check_mode("hybrid") == "hybrid"
    with pytest.raises(InvalidRequest, match="Valid modes: dense, lexical, hybrid"):
        check_mode("sparse")


@pytest.mark.slow
def test_end_to_end_lexical_on_tiny_beir(tiny_beir: Path, sqlite_settings) -> None:
    """Real ingest (MiniLM embeds the corpus) + BM25 search; re-running re-indexes nothing."""
    from evaluation.retrieval import run_retrieval_eval
    from service import build

    ds = load_beir(tiny_beir)
    c = build(sqlite_settings)
    try:
        res, run, timings = run_retrieval_eval(
            c,
            ds,
            collection="tiny",
            mode="lexical",
            k=5,
            show_progress=False,
        )
        assert timings["documents"] == 8 and timings["indexed"] == 8
        assert timings["latency_median_ms"] > 0
        assert set(run) == {"q1", "q2", "q3"}
        assert next(iter(run["q1"])) == "d1"  # "lava", "volcano", "erupts" share terms
        assert next(iter(run["q2"])) == "d3"  # "bread"
        # Worked by hand (lowercase, English stopwords, no stemming):
        #   q1 "volcano eruption lava": d1 matches lava+volcano, d2 eruption -> [d1, d2];
        #      grades 2, 1 in ideal order -> nDCG 1, recall 1 (d5 is graded 0).
        #   q2 "how to bake bread": d3 has "bread" twice ("baking" != "bake"); d8 shares
        #      only "how" (not in bm25s's stopword list) -> [d3, d8] -> nDCG 1.
        #   q3 "sun planets solar system": d6 and d7 (both grade 2) match, d8 (grade 1)
        #      shares no term. DCG = 2 + 2/log2(3) = 3.261860; IDCG adds 1/log2(4):
        #      3.761860 -> nDCG 0.867085; recall 2/3.
        #   Means: nDCG@10 (1 + 1 + 0.867085) / 3 = 0.955695, recall@100 8/9, MRR@10 1.
        assert set(run["q1"]) == {"d1", "d2"} and list(run["q2"]) == ["d3", "d8"]
        assert set(run["q3"]) == {"d6", "d7"}
        assert res.aggregate["ndcg@10"] == pytest.approx(0.955695, abs=1e-5)
        assert res.aggregate["recall@100"] == pytest.approx(8 / 9, abs=1e-6)
        assert res.aggregate["mrr@10"] == pytest.approx(1.0)

        again, run2, t2 = run_retrieval_eval(
            c,
            ds,
            collection="tiny",
            mode="lexical",
            k=5,
            show_progress=False,
        )
        assert t2["indexed"] == 0 and t2["unchanged"] == 8
        assert run2 == run and again.aggregate == res.aggregate

        with pytest.raises(InvalidRequest, match="already exists"):
            run_retrieval_eval(
                c,
                ds,
                collection="tiny",
                mode="lexical",
                reuse=False,
                show_progress=False,
            )
    finally:
        c.close()


@pytest.mark.slow
def test_collection_bm25_parameters_reach_search(
    tiny_beir: Path, sqlite_settings: Settings
) -> None:
    """A collection's k1/b score its lexical search; reusing it with others is refused."""
    import numpy as np

    from evaluation.retrieval import collection_config, run_retrieval_eval
    from indexer.lexical import build_lexical, search_lexical
    from service import build

    ds = load_beir(tiny_beir)
    docs = list(ds.documents())
    index = build_lexical([d.text for d in docs], np.arange(len(docs)))
    query = ds.queries["q1"]

    def reference(k1: float, b: float) -> dict[str, float]:
        scores, rows = search_lexical([index], query, 10, k1=k1, b=b)
        return {docs[r].id: float(s) for r, s in zip(rows, scores, strict=True)}

    c = build(sqlite_settings)
    try:
        runs = {}
        for name, k1, b in (("plain", None, None), ("lucene", 1.2, 0.75), ("flat", 0.0, 0.0)):
            _, run, _ = run_retrieval_eval(
                c,
                ds,
                collection=name,
                mode="lexical",
                k=10,
                bm25_k1=k1,
                bm25_b=b,
                show_progress=False,
            )
            runs[name] = run["q1"]
        assert collection_config(c, "plain")["bm25_k1"] == 0.9
        assert collection_config(c, "plain")["bm25_b"] == 0.4
        assert collection_config(c, "lucene")["bm25_k1"] == 1.2
        assert collection_config(c, "lucene")["bm25_b"] == 0.75
        for name, (k1, b) in {"plain": (0.9, 0.4), "lucene": (1.2, 0.75), "flat": (0, 0)}.items():
            assert runs[name] == pytest.approx(reference(k1, b), rel=1e-6)
        assert runs["plain"]["d1"] != pytest.approx(runs["lucene"]["d1"], rel=1e-3)

        # Reusing a collection: unspecified parameters accept it, others are refused.
        run_retrieval_eval(c, ds, collection="lucene", mode="lexical", show_progress=False)
        with pytest.raises(InvalidRequest, match=r"BM25 k1=1\.2 b=0\.75, not k1=0\.9;"):
            run_retrieval_eval(
                c, ds, collection="lucene", mode="lexical", bm25_k1=0.9, show_progress=False
            )
        with pytest.raises(InvalidRequest, match="bm25_b"):
            run_retrieval_eval(
                c, ds, collection="bad", mode="lexical", bm25_b=1.5, show_progress=False
            )
    finally:
        c.close()
