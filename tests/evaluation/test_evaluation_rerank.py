"""Reranking evaluation: the registry, candidates as given, an embedder reranker, DL19."""

from __future__ import annotations

import itertools
import logging
import re
import zlib
from collections.abc import Sequence
from math import log2
from pathlib import Path

import numpy as np
import pytest

from core.datasets import Candidate, load_trec_candidates, load_trec_qrels
from core.errors import InvalidRequest
from core.settings import Settings
from evaluation.rerank import (
    RERANKERS,
    EmbedderReranker,
    FirstStage,
    _scores_below,
    make_reranker,
    register_reranker,
    run_rerank_eval,
)

SHARED_DL19 = Path(__file__).resolve().parents[3] / "shared" / "data" / "trec-dl19"


class BagOfWords:
    """A deterministic stand-in embedder: hashed word counts, no model weights."""

    name = "bow"
    dim = 4096

    def embed(
        self, texts: Sequence[str], *, kind: str = "document", normalize: bool = True
    ) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def test_candidates_as_given(tiny_trec: Path) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    res, run, timings = run_rerank_eval(cands, qrels, FirstStage(), show_progress=False)
    # 101: p2 (1), p3 (0), p1 (3): DCG = 1 + 3/log2(4) = 2.5; IDCG = 3 + 1/log2(3)
    # 102: p1 (unjudged), p3 (2): DCG = 2/log2(3);          IDCG = 2
    # 104: judged, no candidates -> 0.   103: unjudged -> skipped.
    ndcg = {"101": 2.5 / (3 + 1 / log2(3)), "102": (2 / log2(3)) / 2, "104": 0.0}
    assert set(res.per_query) == {"101", "102", "104"}
    for qid, value in ndcg.items():
        assert res.per_query[qid]["ndcg@10"] == pytest.approx(value)
    assert res.aggregate["ndcg@10"] == pytest.approx(0.439820, abs=1e-6)
    # TREC DL binary measures count grade >= 2: RR 1/3 (101), 1/2 (102), 0 (104)
    assert res.aggregate["mrr@10-l2"] == pytest.approx((1 / 3 + 1 / 2) / 3)
    assert list(run["101"]) == ["p2", "p3", "p1"] and "103" not in run
    assert timings["queries"] == 2 and timings["candidates"] == 5


def test_embedder_reranker_reorders(tiny_trec: Path) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    reranker = EmbedderReranker(BagOfWords(), name="embedder:bow")  # type: ignore[arg-type]
    res, run, _ = run_rerank_eval(cands, qrels, reranker, show_progress=False)
    assert next(iter(run["101"])) == "p1"  # "lava", "volcano" both match
    assert next(iter(run["102"])) == "p3"  # "bread"
    assert res.per_query["101"]["ndcg@10"] == pytest.approx(1.0)
    assert res.aggregate["ndcg@10"] == pytest.approx(2 / 3)


class Reverse:
    """Reverses the first-stage order of whatever it is given (the rank is the score)."""

    name = "reverse"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def score(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        self.seen.append(len(candidates))
        return np.array([c.rank for c in candidates], dtype=np.float64)


RECALL = ("recall@100", "recall@100-l2", "ndcg@10")


def test_depth_reranks_the_top_and_keeps_the_tail(tiny_trec: Path) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    full, _, _ = run_rerank_eval(cands, qrels, FirstStage(), metrics=RECALL, show_progress=False)
    reverse = Reverse()
    res, run, timings = run_rerank_eval(
        cands, qrels, reverse, depth=2, metrics=RECALL, show_progress=False
    )
    assert reverse.seen == [2, 2]  # 101 and 102: only the top 2 go to the reranker
    # 101 is p2 p3 p1 first-stage: the top two swap, p1 (grade 3) stays, third.
    assert list(run["101"]) == ["p3", "p2", "p1"]
    assert list(run["102"]) == ["p3", "p1"]
    # The tail is scored strictly below the reranked block, so the scores give the order.
    for docs in run.values():
        values = list(docs.values())
        assert all(a > b for a, b in itertools.pairwise(values))
    # Nothing is cut: recall at the list length is that of the full first stage, per query.
    for qid in ("101", "102", "104"):
        for metric in ("recall@100", "recall@100-l2"):
            assert res.per_query[qid][metric] == full.per_query[qid][metric]
    assert res.per_query["101"]["recall@100-l2"] == 1.0  # p1 was lost by truncating to 2
    # 101 reordered p3 (0), p2 (1), p1 (3): DCG = 1/log2(3) + 3/2
    idcg = 3 + 1 / log2(3)
    assert res.per_query["101"]["ndcg@10"] == pytest.approx((1 / log2(3) + 1.5) / idcg)
    assert timings["candidates"] == 5 and timings["reranked"] == 4


def test_depth_one_keeps_the_first_stage_list(tiny_trec: Path) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    _, run, _ = run_rerank_eval(cands, qrels, Reverse(), depth=1, show_progress=False)
    assert run["101"] == {"p2": 1.0, "p3": 0.0, "p1": -1.0}  # first-stage order kept
    _, deep, _ = run_rerank_eval(cands, qrels, Reverse(), depth=50, show_progress=False)
    assert list(deep["101"]) == ["p1", "p3", "p2"]  # depth beyond the list reranks it all
    with pytest.raises(InvalidRequest, match="depth must be at least 1"):
        run_rerank_eval(cands, qrels, Reverse(), depth=0, show_progress=False)


def test_tail_scores_stay_strictly_below_huge_scores() -> None:
    for floor in (0.0, -3.5, 1e17, -1e17, 5e300):
        tail = _scores_below(floor, 5)
        assert np.isfinite(tail).all() and tail[0] < floor
        assert np.all(np.diff(tail) < 0)


def test_coverage_counts_missing_and_unjudged_queries(
    tiny_trec: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    with caplog.at_level(logging.WARNING, logger="evaluation.rerank"):
        res, _, _ = run_rerank_eval(cands, qrels, FirstStage(), show_progress=False)
    assert res.coverage == {
        "judged": 3,
        "evaluated": 2,
        "judged_absent": 1,
        "judged_absent_ids": ["104"],
        "unjudged": 1,
    }
    assert res.incomplete
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "1 without candidates (scored 0" in warned[0].getMessage()
    assert "104" in warned[0].getMessage() and "1 unjudged query" in warned[0].getMessage()

    caplog.clear()
    covered = {qid: qrels[qid] for qid in ("101", "102")}
    with caplog.at_level(logging.WARNING, logger="evaluation.rerank"):
        full, _, _ = run_rerank_eval(
            cands, covered, FirstStage(), show_progress=False, metrics=["ndcg@10"]
        )
    assert full.coverage["judged_absent"] == 0 and full.coverage["unjudged"] == 1
    # The same two queries, now the only judged ones: the mean is theirs alone.
    assert full.aggregate["ndcg@10"] == pytest.approx(
        (res.per_query["101"]["ndcg@10"] + res.per_query["102"]["ndcg@10"]) / 2
    )


def test_registry() -> None:
    settings = Settings(env="test")
    assert isinstance(make_reranker("none", settings), FirstStage)
    with pytest.raises(InvalidRequest, match=r"Valid rerankers: none, embedder\[:MODEL\]"):
        make_reranker("cross-encoder:x", settings)
    with pytest.raises(InvalidRequest, match="takes no argument"):
        make_reranker("none:x", settings)

    register_reranker("bow", lambda arg, s: EmbedderReranker(BagOfWords(), name="bow"))  # type: ignore[arg-type]
    try:
        assert make_reranker("bow", settings).name == "bow"
    finally:
        del RERANKERS["bow"]


def test_text_rerankers_are_available_by_name(tiny_trec: Path) -> None:
    """``quarry eval rerank --reranker`` takes any text reranker of ranker.text: a packaged
    name scores the candidates' passages exactly as the reranker itself does."""
    from ranker.text import LoadOptions, load_reranker

    settings = Settings(env="test")
    with pytest.raises(InvalidRequest, match=r"quarry-li-cranfield.*smollm2-likelihood"):
        make_reranker("no-such-reranker", settings)
    adapter = make_reranker("quarry-li-cranfield", settings)
    assert adapter.name == "quarry-li-cranfield"
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qid, hits = next(iter(cands.candidates.items()))
    query = cands.queries[qid]
    direct = load_reranker("quarry-li-cranfield", LoadOptions(device="cpu"))
    expected = direct.score(query, [h.content for h in hits])
    np.testing.assert_allclose(adapter.score(query, hits), expected, rtol=1e-5, atol=1e-5)


def test_unjudged_candidates_only(tiny_trec: Path) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    with pytest.raises(InvalidRequest, match="wrong qrels file"):
        run_rerank_eval(cands, {"999": {"x": 1}}, FirstStage(), show_progress=False)


@pytest.mark.skipif(not SHARED_DL19.is_dir(), reason="../shared/data/trec-dl19 is absent")
@pytest.mark.parametrize(
    ("file", "expected"),
    [("BM25_dl19.json", 0.5058), ("SPLADE_P_P_ENSEMBLE_DISTIL_dl19.json", 0.7308)],
)
def test_dl19_first_stage_reproduces_published(file: str, expected: float) -> None:
    cands = load_trec_candidates(SHARED_DL19 / "candidates" / file)
    qrels = load_trec_qrels(SHARED_DL19 / "qrels" / "qrels.dl19-passage.txt")
    res, _, timings = run_rerank_eval(cands, qrels, FirstStage(), show_progress=False)
    assert timings["queries"] == 43
    assert round(res.aggregate["ndcg@10"], 4) == expected


@pytest.mark.skipif(not SHARED_DL19.is_dir(), reason="../shared/data/trec-dl19 is absent")
def test_dl19_depth_keeps_recall_at_100() -> None:
    cands = load_trec_candidates(SHARED_DL19 / "candidates" / "BM25_dl19.json")
    qrels = load_trec_qrels(SHARED_DL19 / "qrels" / "qrels.dl19-passage.txt")
    full, _, _ = run_rerank_eval(cands, qrels, FirstStage(), show_progress=False)
    deep, run, timings = run_rerank_eval(cands, qrels, Reverse(), depth=10, show_progress=False)
    assert timings["reranked"] == 43 * 10 and timings["candidates"] == 43 * 100
    assert all(len(docs) == 100 for docs in run.values())
    assert deep.aggregate["recall@100-l2"] == full.aggregate["recall@100-l2"]  # 0.4910
    assert round(full.aggregate["recall@100-l2"], 4) == 0.4910
    assert deep.aggregate["ndcg@10"] < full.aggregate["ndcg@10"]  # the top 10, reversed
