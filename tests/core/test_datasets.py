"""BEIR and TREC loaders, run files, and their errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from core.datasets import (
    load_beir,
    load_run,
    load_trec_candidates,
    load_trec_qrels,
    run_format,
)
from core.errors import InvalidRequest

ROOT = Path(__file__).resolve().parents[2]


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
    assert [d.id for d in docs] == [f"d{i}" for i in range(1, 9)]
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


JSON_RUN = json.dumps(
    {"q1": {"d2": 1.0, "d1": 3, "d5": 2.0}, "q3": {"d7": 0.9, "d4": 0.5, "d6": 0.5}, "q9": {}}
)


def test_run_json_sorted_by_score_ties_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "hand.run.json"
    path.write_text(JSON_RUN)
    run = load_run(path)
    assert run_format(path) == "json"
    assert list(run) == ["q1", "q3", "q9"]
    assert list(run["q1"].items()) == [("d1", 3.0), ("d5", 2.0), ("d2", 1.0)]
    assert list(run["q3"]) == ["d7", "d4", "d6"]  # d4 and d6 tie: file order
    assert run["q9"] == {}
    assert isinstance(run["q1"]["d1"], float)


def test_run_gzipped_json(tmp_path: Path) -> None:
    path = tmp_path / "hand.run.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n  " + JSON_RUN)
    run = load_run(path)
    assert run_format(path) == "json" and list(run["q3"]) == ["d7", "d4", "d6"]
    renamed = tmp_path / "no-suffix"  # gzip is told by content, not by name
    renamed.write_bytes(path.read_bytes())
    assert load_run(renamed) == run


def test_run_committed_reference_keeps_quarry_order() -> None:
    """The SciFact hybrid run (RRF, many tied scores) reads back in the order it was written."""
    path = ROOT / "evaluation/results/scifact/scifact-hybrid.run.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        written = json.load(fh)
    run = load_run(path)
    assert len(run) == 300
    assert all(list(run[qid]) == list(docs) for qid, docs in written.items())


def test_run_trec(tmp_path: Path) -> None:
    path = tmp_path / "bm25.trec"
    path.write_text(
        "q1 Q0 d2 3 1.5 bm25\n"
        "q1 Q0 d1 1 4.25 bm25\n"
        "\n"
        "q3\tQ0\td8\t2\t2\tbm25\n"  # any whitespace separates fields
        "q3 Q0 d6 1 2 bm25\n"
        "q1 Q0 d5 2 1.5 bm25\n"
    )
    run = load_run(path)
    assert run_format(path) == "trec"
    assert list(run["q1"].items()) == [("d1", 4.25), ("d5", 1.5), ("d2", 1.5)]  # tie: rank
    assert list(run["q3"]) == ["d6", "d8"]
    gz = tmp_path / "bm25.trec.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_run(gz) == run


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("q1 Q0 d1 1 2.0 tag\nq1 Q0 d2 2 1.0\n", r"r\.txt:2: expected a TREC run line"),
        ("q1 Q0 d1 1 2.0 tag\n\nq1 Q0 d2 2 high tag\n", r"r\.txt:3: score must be a number"),
        ("q1 Q0 d1 first 2.0 tag\n", r"r\.txt:1: rank must be an integer"),
        ("q1 Q0 d1 1 nan tag\n", r"r\.txt:1: score must be finite"),
        ("q1 Q0 d1 1 2 tag\nq1 Q0 d1 2 1 tag\n", r"r\.txt:2: document 'd1' listed twice"),
        ('{"q1": {"d1": 1.0}', "not valid JSON"),
        ('{"q1": ["d1", "d2"]}', "query 'q1': expected an object"),
        ('{"q1": {"d1": "high"}}', "query 'q1' document 'd1': score must be a number"),
        ('{"q1": {"d1": true}}', "score must be a number"),
        ('{"q1": {"d1": NaN}}', "score must be finite"),
        ("{}", "holds no rankings"),
        ("\n\n", "holds no rankings"),
    ],
)
def test_run_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "r.txt"
    path.write_text(content)
    with pytest.raises(InvalidRequest, match=message):
        load_run(path)


def test_run_missing_or_binary(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="Run file not found"):
        load_run(tmp_path / "none.trec")
    bad = tmp_path / "r.bin"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidRequest, match="not a UTF-8 text or gzip file"):
        load_run(bad)
