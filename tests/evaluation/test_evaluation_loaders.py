"""BEIR and TREC loaders, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InvalidRequest
from evaluation.loaders import load_beir, load_trec_candidates, load_trec_qrels


def test_beir_test_split(tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir)
    assert ds.name == "tiny_beir" and ds.split == "test"
    assert ds.queries == {
        "q1": "volcano eruption lava",
        "q2": "how to bake bread",
        "q3": "sun and planets of the solar system",
    }  # q4 is judged only in train
    assert ds.qrels["q1"] == {"d1": 2, "d2": 1, "d5": 0}
    assert ds.qrels["q3"] == {"d6": 2, "d7": 2, "d8": 1}
    docs = list(ds.documents())
    assert [d.external_id for d in docs] == [f"d{i}" for i in range(1, 9)]
    assert docs[0].text == "Volcanoes\nLava erupts from the crater of an active volcano."
    assert docs[0].metadata == {"title": "Volcanoes"}
    assert docs[7].text.startswith("Astronomers") and docs[7].metadata == {}  # empty title


def test_beir_other_split(tiny_beir: Path) -> None:
    ds = load_beir(tiny_beir, "train")
    assert ds.queries == {"q4": "sourdough starter"} and ds.qrels == {"q4": {"d4": 1}}


def test_beir_errors(tiny_beir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not found"):
        load_beir(tmp_path / "nope")
    with pytest.raises(InvalidRequest, match=r"corpus\.jsonl is missing"):
        load_beir(tmp_path)
    with pytest.raises(InvalidRequest, match="Available splits: test, train"):
        load_beir(tiny_beir, "dev")

    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (bad / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(InvalidRequest, match=r"test.tsv:2: expected 3 tab-separated"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q1\td1\thigh\n")
    with pytest.raises(InvalidRequest, match="relevance must be an integer"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q9\td1\t1\n")
    with pytest.raises(InvalidRequest, match=r"absent from queries\.jsonl"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    (bad / "queries.jsonl").write_text("{not json\n")
    with pytest.raises(InvalidRequest, match=r"queries.jsonl:1"):
        load_beir(bad)


def test_trec_candidates(tiny_trec: Path) -> None:
    cs = load_trec_candidates(tiny_trec / "candidates.json")
    assert cs.name == "candidates" and len(cs) == 3
    assert cs.queries == {
        "101": "volcano eruption lava",
        "102": "how to bake bread",  # the {"text", "qid"} query form
        "103": "unjudged query",
    }
    first = cs.candidates["101"]
    assert [c.docid for c in first] == ["p2", "p3", "p1"]
    assert first[0].rank == 1 and first[0].score == 9.5 and first[0].content.startswith("Ash")


def test_trec_candidates_sorted_by_rank(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    hits = [
        {"qid": 1, "docid": "b", "rank": 2, "score": 1.0, "content": "b"},
        {"qid": 1, "docid": "a", "rank": 1, "score": 2.0, "content": "a"},
    ]
    path.write_text(json.dumps([{"query": "q", "hits": hits}]))
    assert [c.docid for c in load_trec_candidates(path).candidates["1"]] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"query": "q"}', "expected a JSON list"),
        ('[{"query": "q"}]', 'with "query" and "hits"'),
        ('[{"query": "q", "hits": []}]', "no query id"),
        ('[{"query": "q", "hits": [{"qid": 1, "docid": "a"}]}]', "entry 0 hit 0"),
        ("[]", "holds no queries"),
    ],
)
def test_trec_candidates_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(InvalidRequest, match=message):
        load_trec_candidates(path)


def test_trec_candidates_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="Candidates file not found"):
        load_trec_candidates(tmp_path / "x.json")


def test_trec_qrels(tiny_trec: Path, tmp_path: Path) -> None:
    qrels = load_trec_qrels(tiny_trec / "qrels.txt")
    assert qrels == {"101": {"p1": 3, "p2": 1, "p3": 0}, "102": {"p3": 2}, "104": {"p9": 1}}
    bad = tmp_path / "q.txt"
    bad.write_text("101 Q0 p1\n")
    with pytest.raises(InvalidRequest, match=r"q.txt:1: expected TREC qrels"):
        load_trec_qrels(bad)
    with pytest.raises(InvalidRequest, match="Qrels file not found"):
        load_trec_qrels(tmp_path / "none.txt")
