"""Training data: the JSON-lines format and the BEIR builder with BM25 hard negatives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InvalidRequest
from embedder.train.data import TrainExample, read_examples, write_examples
from service.training import examples_from_beir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_beir_train"


def _corpus() -> dict[str, str]:
    """Document id → text as the ingest path writes it (title + newline + text)."""
    docs = {}
    for line in (FIXTURE / "corpus.jsonl").read_text().splitlines():
        rec = json.loads(line)
        docs[rec["_id"]] = f"{rec['title']}\n{rec['text']}" if rec["title"] else rec["text"]
    return docs


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_jsonl_round_trip(tmp_path: Path, name: str) -> None:
    examples = [
        TrainExample("q one", "positive one", ("neg a", "neg b")),
        TrainExample("q two ünïcode", "positive two"),
    ]
    path = write_examples(examples, tmp_path / "sub" / name)
    assert read_examples(path) == examples
    if not name.endswith(".gz"):
        first = json.loads(path.read_text().splitlines()[0])
        assert first == {
            "query": "q one",
            "positive": "positive one",
            "negatives": ["neg a", "neg b"],
        }


def test_reader_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n\n{"query": "q", "negatives": []}\n')
    with pytest.raises(InvalidRequest, match=r"bad.jsonl:3: 'positive' must be"):
        read_examples(path)
    path.write_text('{"query": "q", "positive": "p", "negatives": "n"}\n')
    with pytest.raises(InvalidRequest, match=r":1: 'negatives' must be a list"):
        read_examples(path)
    path.write_text("not json\n")
    with pytest.raises(InvalidRequest, match=r":1: not valid JSON"):
        read_examples(path)
    path.write_text("\n")
    with pytest.raises(InvalidRequest, match="no training examples"):
        read_examples(path)
    with pytest.raises(InvalidRequest, match="not found"):
        read_examples(tmp_path / "missing.jsonl")


def test_beir_builder_one_example_per_relevant_document() -> None:
    docs = _corpus()
    examples = examples_from_beir(FIXTURE, "train", hard_negatives=2, seed=0)
    # q1 and q3 have two relevant documents; q9's only one is not in the corpus (skipped);
    # q2's d04 has grade 0 and is not a positive.
    pairs = [(e.query, e.positive) for e in examples]
    assert len(pairs) == 10 and len(set(pairs)) == 10
    positives_of_q1 = {e.positive for e in examples if e.query == "lava from a volcano"}
    assert positives_of_q1 == {docs["d01"], docs["d02"]}
    assert docs["d01"] == "Volcano\nlava flows from the crater of an active volcano"
    assert ("music concert", docs["d12"]) in pairs  # untitled document: its text alone
    assert all(e.query != "a document that is not in the corpus" for e in examples)
    relevant = {(e.query, e.positive) for e in examples}
    for e in examples:
        assert len(e.negatives) == 2 and len(set(e.negatives)) == 2
        assert all((e.query, n) not in relevant for n in e.negatives)


def test_hard_negatives_are_bm25_top_ranked_non_relevant() -> None:
    docs = _corpus()
    examples = examples_from_beir(FIXTURE, hard_negatives=1)
    by_query = {e.query: e for e in examples}
    # "how to bake bread": d03 is relevant; BM25's next best is the sourdough document,
    # judged non-relevant (grade 0), which makes it a legitimate hard negative.
    assert by_query["how to bake bread"].negatives == (docs["d04"],)
    # "ocean water": d07 relevant, the reef document shares both words.
    assert by_query["ocean water"].negatives == (docs["d08"],)


def test_builder_is_seeded() -> None:
    a = examples_from_beir(FIXTURE, hard_negatives=2, depth=6, seed=1)
    assert a == examples_from_beir(FIXTURE, hard_negatives=2, depth=6, seed=1)
    others = [examples_from_beir(FIXTURE, hard_negatives=2, depth=6, seed=s) for s in (2, 3, 4)]
    assert any(o != a for o in others)


def test_builder_without_negatives_and_bad_arguments() -> None:
    examples = examples_from_beir(FIXTURE, hard_negatives=0)
    assert len(examples) == 10 and all(e.negatives == () for e in examples)
    with pytest.raises(InvalidRequest, match="depth"):
        examples_from_beir(FIXTURE, hard_negatives=3, depth=2)
    with pytest.raises(InvalidRequest, match="Available splits: test, train"):
        examples_from_beir(FIXTURE, "dev")


def test_importing_embedder_train_loads_no_torch() -> None:
    code = (
        "import sys, embedder, embedder.train, cli.train; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
