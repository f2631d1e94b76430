"""Query splits and k-fold cross-validation: no fold ever scores a query it trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ranker.text.train.examples as rerank_examples
import service.training as service_training
from core.datasets import load_trec_candidates
from core.errors import InvalidRequest
from ranker.text import LoadOptions, load_reranker
from ranker.text.train.kfold import (
    FOLDS_FILE,
    FoldsPlan,
    score_candidates,
    score_kfold,
    train_kfold,
    write_run,
)
from ranker.text.train.splits import holdout_split, kfold_split
from ranker.text.train.trainer import RerankTrainConfig

CPU = LoadOptions(device="cpu")

TOPICS = {
    "q1": ("lava from a volcano", "lava flows from the crater of an active volcano"),
    "q2": ("how to bake bread", "knead the dough and bake bread in the oven"),
    "q3": ("stock market crash", "shares fell as the stock market crash spread"),
    "q4": ("pasta recipe", "boiling pasta with a tomato sauce recipe"),
    "q5": ("ocean water", "the ocean water of the coral reef"),
    "q6": ("music concert", "a music concert in the park"),
    "q7": ("volcano ash", "ash from the volcano"),
}


def write_trec_set(folder: Path) -> tuple[Path, Path]:
    """A small TREC-style set: every query's candidates are all topics' documents; its own
    is graded 2 or 3, one other 1 (partially relevant), one 0, the rest unjudged."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(TOPICS)
    entries, qrels = [], []
    for n, qid in enumerate(ids):
        hits = [
            {
                "qid": qid,
                "docid": f"d{other}",
                "rank": r + 1,
                "score": 10.0 - r,
                "content": TOPICS[other][1],
            }
            for r, other in enumerate(ids[n:] + ids[:n])
        ][::-1]  # the relevant document is ranked last by the "first stage"
        for rank, hit in enumerate(hits, 1):
            hit["rank"], hit["score"] = rank, 10.0 - rank
        entries.append({"query": {"text": TOPICS[qid][0], "qid": qid}, "hits": hits})
        qrels += [
            f"{qid} 0 d{qid} {2 + n % 2}",
            f"{qid} 0 d{ids[n - 1]} 1",
            f"{qid} 0 d{ids[n - 2]} 0",
        ]
    cands, qrels_path = folder / "candidates.json", folder / "qrels.txt"
    cands.write_text(json.dumps(entries))
    qrels_path.write_text("\n".join(qrels) + "\n")
    return cands, qrels_path


def test_kfold_split_partitions_the_queries() -> None:
    for n in (5, 7, 43):
        ids = [f"q{i}" for i in range(n)]
        for k in (2, 3, 5):
            folds = kfold_split(ids, k, seed=1)
            tests = [set(f.test) for f in folds]
            assert sorted(q for t in tests for q in t) == sorted(ids)  # each scored once
            assert max(map(len, tests)) - min(map(len, tests)) <= 1
            for fold in folds:
                assert not set(fold.train) & set(fold.test)
                assert set(fold.train) | set(fold.test) == set(ids)
    assert kfold_split(ids, 5, seed=1) == kfold_split(ids[::-1], 5, seed=1)  # order-free
    assert kfold_split(ids, 5, seed=1) != kfold_split(ids, 5, seed=2)
    with pytest.raises(InvalidRequest, match="folds must be >= 2"):
        kfold_split(ids, 1)
    with pytest.raises(InvalidRequest, match="cannot be split"):
        kfold_split(ids[:3], 5)


def test_holdout_split() -> None:
    ids = [str(i) for i in range(225)]
    train, held = holdout_split(ids, 0.2, seed=0)
    assert len(held) == 45 and not set(train) & set(held)
    assert set(train) | set(held) == set(ids)
    assert holdout_split(ids, 0.2, seed=0) == (train, held)
    with pytest.raises(InvalidRequest):
        holdout_split(ids, 1.0)


def test_candidate_examples_follow_the_grades(tmp_path: Path) -> None:
    cands, qrels = write_trec_set(tmp_path)
    examples = rerank_examples.examples_from_candidates(cands, qrels, min_grade=2)
    assert len(examples) == len(TOPICS)
    by_query = {e.query: e for e in examples}
    e = by_query["lava from a volcano"]
    assert e.positive == TOPICS["q1"][1]
    # q7's document is graded 1 (partially relevant): neither positive nor negative.
    assert TOPICS["q7"][1] not in e.negatives and len(e.negatives) == len(TOPICS) - 2
    assert e.negatives[0] == TOPICS["q6"][1]  # rank order of the first stage: hardest first
    # min_grade 3 keeps only the queries graded 3; min_grade 1 makes the 1s positives too.
    assert len(rerank_examples.examples_from_candidates(cands, qrels, min_grade=3)) == 3
    assert len(rerank_examples.examples_from_candidates(cands, qrels, min_grade=1)) == 14
    few = rerank_examples.examples_from_candidates(
        cands, qrels, max_negatives=2, query_ids=["q2", "q3"]
    )
    assert [len(x.negatives) for x in few] == [2, 2]
    assert {x.query for x in few} == {"how to bake bread", "stock market crash"}
    with pytest.raises(InvalidRequest, match="no candidates"):
        rerank_examples.examples_from_candidates(cands, qrels, query_ids=["q99"])


def test_kfold_never_trains_on_a_scored_query(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cands, qrels = write_trec_set(tmp_path / "data")
    built: list[tuple[list[str], set[str]]] = []
    original = rerank_examples.examples_from_candidates

    def spy(*args: Any, **kwargs: Any) -> Any:
        examples = original(*args, **kwargs)
        built.append((list(kwargs["query_ids"]), {e.query for e in examples}))
        return examples

    monkeypatch.setattr(rerank_examples, "examples_from_candidates", spy)
    config = RerankTrainConfig(
        kind="knrm",
        backbone=str(tiny_bert),
        steps=2,
        batch_size=2,
        negatives=2,
        head_lr=0.1,
        device="cpu",
    )
    result = train_kfold(config, cands, qrels, tmp_path / "folds", folds=3, progress=False)
    plan = FoldsPlan.load(tmp_path / "folds")
    assert [f.index for f in plan.folds] == [0, 1, 2]
    assert sorted(q for f in plan.folds for q in f.test) == sorted(TOPICS)
    query_text = {qid: text for qid, (text, _) in TOPICS.items()}
    for fold, (asked, trained_texts) in zip(plan.folds, built, strict=True):
        assert set(asked) == set(fold.train)
        assert not set(fold.train) & set(fold.test)
        # The texts the fold's model trained on are its training queries' only.
        assert not trained_texts & {query_text[q] for q in fold.test}
        record_path = tmp_path / "folds" / f"fold-{fold.index}" / "training.json"
        record = json.loads(record_path.read_text())
        assert record["train_queries"] == list(fold.train)
        assert record["score_queries"] == list(fold.test)
    assert len(result.final_losses) == 3

    run = score_kfold(tmp_path / "folds", cands, options=CPU)
    assert list(run) == list(TOPICS)
    candidates = load_trec_candidates(cands)
    for fold in plan.folds:  # each query's scores are its own fold model's
        model = load_reranker(str(tmp_path / "folds" / f"fold-{fold.index}"), CPU)
        own = score_candidates(model, candidates, list(fold.test))
        for qid in fold.test:
            assert run[qid] == own[qid]
    path = write_run(run, tmp_path / "pooled.run.json")
    from core.datasets import load_run

    assert {q: list(d) for q, d in load_run(path).items()} == {q: list(d) for q, d in run.items()}


def test_scoring_refuses_folds_that_would_leak(tmp_path: Path) -> None:
    cands, _ = write_trec_set(tmp_path / "data")
    folder = tmp_path / "folds"
    folder.mkdir()
    folds = kfold_split(list(TOPICS), 2)
    leaky = {
        "folds": [
            {
                "fold": 0,
                "model": "fold-0",
                "train_queries": [*folds[0].train, "q1"],
                "score_queries": list(folds[0].test),
            },
            {
                "fold": 1,
                "model": "fold-1",
                "train_queries": list(folds[1].train),
                "score_queries": list(folds[1].test),
            },
        ]
    }
    if "q1" not in folds[0].test:  # make the leak real: fold 0 scores q1 and trained on it
        leaky["folds"][0]["score_queries"].append("q1")
        leaky["folds"][1]["score_queries"].remove("q1")
    (folder / FOLDS_FILE).write_text(json.dumps(leaky))
    with pytest.raises(InvalidRequest, match="scores queries it was trained on: q1"):
        score_kfold(folder, cands)
    partial = {
        "folds": [
            {"fold": 0, "model": "fold-0", "train_queries": ["q2"], "score_queries": ["q1"]},
        ]
    }
    (folder / FOLDS_FILE).write_text(json.dumps(partial))
    with pytest.raises(InvalidRequest, match="scored by no fold"):
        score_kfold(folder, cands)
    twice = {
        "folds": [
            {"fold": 0, "model": "a", "train_queries": [], "score_queries": ["q1"]},
            {"fold": 1, "model": "b", "train_queries": [], "score_queries": ["q1"]},
        ]
    }
    (folder / FOLDS_FILE).write_text(json.dumps(twice))
    with pytest.raises(InvalidRequest, match="scored by folds 0 and 1"):
        score_kfold(folder, cands)


def test_candidates_from_beir_and_query_filter() -> None:
    from tests.ranker.text.conftest import BEIR_TRAIN

    cands = service_training.candidates_from_beir(BEIR_TRAIN, "train", depth=3)
    assert set(cands.queries) == {f"q{i}" for i in range(1, 10)}
    hits = cands.candidates["q1"]
    assert [h.rank for h in hits] == [1, 2]  # only documents sharing a term with the query
    assert hits[0].score >= hits[-1].score
    assert hits[0].content.startswith("Volcano\n")
    sub = service_training.examples_from_beir(BEIR_TRAIN, hard_negatives=1, query_ids=["q1", "q2"])
    assert {e.query for e in sub} == {"lava from a volcano", "how to bake bread"}
    with pytest.raises(InvalidRequest, match="not judged"):
        service_training.examples_from_beir(BEIR_TRAIN, query_ids=["nope"])
    assert np.isfinite([h.score for h in hits]).all()
