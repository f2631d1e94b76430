"""ranx metrics on a fixed run, checked against values computed by hand."""

from __future__ import annotations

from math import log2

import pytest

from core.datasets import load_beir
from core.errors import InvalidRequest
from evaluation.metrics import coverage_note, evaluate_run, query_coverage, rank_order_run

# The qrels of tests/fixtures/tiny_beir (test split):
#   q1: d1=2, d2=1, d5=0      q2: d3=1      q3: d6=2, d7=2, d8=1
RUN = {
    "q1": {"d2": 0.9, "d3": 0.8, "d1": 0.7},  # ranks: d2 (1), d3 (0), d1 (2)
    "q2": {"d1": 0.9, "d4": 0.5, "d5": 0.4, "d3": 0.3},  # the one relevant doc at rank 4
    "q3": {"d6": 0.9, "d8": 0.2},  # d7 (grade 2) never retrieved
    "qX": {"d1": 1.0},  # not judged: ignored
}

# nDCG@10, linear gains, discount log2(rank + 1):
#   q1: DCG = 1/log2(2) + 0 + 2/log2(4) = 2.0;   IDCG = 2/log2(2) + 1/log2(3) = 2.6309
#       -> 0.76019
#   q2: DCG = 1/log2(5) = 0.43068;               IDCG = 1 -> 0.43068
#   q3: DCG = 2 + 1/log2(3) = 2.63093;           IDCG = 2 + 2/log2(3) + 1/log2(4) = 3.76186
#       -> 0.69937
NDCG = {
    "q1": 2.0 / (2.0 + 1 / log2(3)),
    "q2": 1 / log2(5),
    "q3": (2 + 1 / log2(3)) / (2 + 2 / log2(3) + 0.5),
}
# MRR@10: first relevant at rank 1, 4, 1 -> 1, 0.25, 1; mean 0.75
MRR = {"q1": 1.0, "q2": 0.25, "q3": 1.0}
# Recall@100 (grade >= 1 relevant): 2/2, 1/1, 2/3; mean 0.88889
RECALL = {"q1": 1.0, "q2": 1.0, "q3": 2 / 3}
# AP: q1 relevant at ranks 1, 3 -> (1/1 + 2/3) / 2 = 0.83333; q2 (1/4) / 1 = 0.25;
#     q3 relevant at 1, 2 of 3 relevant -> (1 + 1) / 3 = 0.66667; MAP 0.58333
AP = {"q1": (1 + 2 / 3) / 2, "q2": 0.25, "q3": 2 / 3}


@pytest.fixture
def qrels(tiny_beir):
    return load_beir(tiny_beir).qrels


def test_metrics_match_hand_computed_values(qrels) -> None:
    res = evaluate_run(qrels, RUN, ("ndcg@10", "mrr@10", "recall@100", "map"))
    assert set(res.per_query) == {"q1", "q2", "q3"}
    for qid in ("q1", "q2", "q3"):
        assert res.per_query[qid]["ndcg@10"] == pytest.approx(NDCG[qid], abs=1e-9)
        assert res.per_query[qid]["mrr@10"] == pytest.approx(MRR[qid], abs=1e-9)
        assert res.per_query[qid]["recall@100"] == pytest.approx(RECALL[qid], abs=1e-9)
        assert res.per_query[qid]["map"] == pytest.approx(AP[qid], abs=1e-9)
    assert res.aggregate["ndcg@10"] == pytest.approx(0.630078, abs=1e-6)
    assert res.aggregate["mrr@10"] == pytest.approx(0.75)
    assert res.aggregate["recall@100"] == pytest.approx(8 / 9)
    assert res.aggregate["map"] == pytest.approx(7 / 12)
    assert res.metric("mrr@10") == MRR


def test_relevance_level_suffix(qrels) -> None:
    # With grades >= 2 only: q1 relevant = {d1} at rank 3 -> RR 1/3; q2 has none -> 0;
    # q3 relevant = {d6, d7}: d6 at rank 1 -> 1.
    res = evaluate_run(qrels, RUN, ["mrr@10-l2"])
    assert res.per_query["q1"]["mrr@10-l2"] == pytest.approx(1 / 3)
    assert res.per_query["q2"]["mrr@10-l2"] == 0.0
    assert res.per_query["q3"]["mrr@10-l2"] == 1.0


def test_missing_and_empty_queries_count_as_zero(qrels) -> None:
    run = {"q1": RUN["q1"], "q3": {}}
    res = evaluate_run(qrels, run, ["ndcg@10", "recall@100"])
    assert res.per_query["q2"] == {"ndcg@10": 0.0, "recall@100": 0.0}
    assert res.per_query["q3"]["ndcg@10"] == 0.0
    assert res.aggregate["ndcg@10"] == pytest.approx(NDCG["q1"] / 3)


def test_no_results_at_all(qrels) -> None:
    res = evaluate_run(qrels, {}, ["ndcg@10"])
    assert res.aggregate["ndcg@10"] == 0.0 and len(res.per_query) == 3
    assert res.coverage["evaluated"] == 0 and res.coverage["judged_absent"] == 3


def test_coverage_counts_absent_and_unjudged_queries(qrels: dict[str, dict[str, int]]) -> None:
    full = evaluate_run(qrels, RUN, ["ndcg@10"])
    assert full.coverage == {
        "judged": 3,
        "evaluated": 3,
        "judged_absent": 0,
        "judged_absent_ids": [],
        "unjudged": 1,  # qX
    }
    partial = evaluate_run(qrels, {"q1": RUN["q1"], "q3": {}}, ["ndcg@10"])
    assert partial.coverage == {
        "judged": 3,
        "evaluated": 1,
        "judged_absent": 2,  # q2 absent, q3 empty: both score 0
        "judged_absent_ids": ["q2", "q3"],
        "unjudged": 0,
    }
    assert partial.incomplete and full.incomplete
    assert not evaluate_run(qrels, {q: RUN[q] for q in qrels}, ["ndcg@10"]).incomplete
    assert coverage_note(partial.coverage, unit="candidates") == (
        "1 of 3 judged queries have candidates; 2 without candidates (scored 0, counted in "
        "the means): q2, q3"
    )
    assert coverage_note(full.coverage) == (
        "3 of 3 judged queries have results; 1 unjudged query left out"
    )
    many = query_coverage({f"q{i}": {"d": 1} for i in range(12)}, {})
    assert coverage_note(many).endswith("q0, q1, q10, q11, q2, q3, q4, q5, q6, q7, ... (2 more)")


def test_preserve_order_ignores_tied_scores(qrels) -> None:
    # All tied: by score the order is ranx's tie-break; in dict order d1 comes first.
    tied = {"q1": {"d5": 0.5, "d1": 0.5, "d2": 0.5}}
    ordered = rank_order_run(tied)
    assert list(ordered["q1"]) == ["d5", "d1", "d2"]
    assert ordered["q1"]["d5"] > ordered["q1"]["d1"] > ordered["q1"]["d2"]
    res = evaluate_run(qrels, tied, ["mrr@10"], preserve_order=True)
    assert res.per_query["q1"]["mrr@10"] == pytest.approx(0.5)  # d1 at rank 2


@pytest.mark.parametrize("bad", ["ndcg@x", "nope", "recall@", ""])
def test_unknown_metric_lists_valid_ones(qrels, bad: str) -> None:
    with pytest.raises(InvalidRequest, match=r"Valid metrics: .*ndcg"):
        evaluate_run(qrels, RUN, [bad])


def test_metric_not_computed() -> None:
    from evaluation.metrics import EvalResult

    with pytest.raises(InvalidRequest, match="not computed"):
        EvalResult({"ndcg@10": 0.5}, {}).metric("map")
