"""Reranking evaluation: the registry, candidates as given, an embedder reranker, DL19."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from math import log2
from pathlib import Path

import numpy as np
import pytest

from core.datasets import load_trec_candidates, load_trec_qrels
from core.errors import InvalidRequest
from core.settings import Settings
from evaluation.rerank import (
    RERANKERS,
    EmbedderReranker,
    FirstStage,
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


def test_depth_limits_candidates(tiny_trec: Path) -> None:
    cands = load_trec_candidates(tiny_trec / "candidates.json")
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    _, run, _ = run_rerank_eval(cands, qrels, FirstStage(), depth=1, show_progress=False)
    assert run["101"] == {"p2": 9.5}


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
