"""The one JSON / JSON-lines reader (core.jsonl) and the ingest reader built on it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from core.errors import InvalidRequest
from core.ingest_files import DEMO_COLLECTION, DEMO_CORPUS, read_jsonl
from core.jsonl import is_gzip, iter_jsonl, open_text, read_json, write_jsonl

RECORDS = [{"a": 1, "text": "ünïcode"}, [1, 2], "plain string"]


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_write_then_read_round_trip(tmp_path: Path, name: str) -> None:
    path = write_jsonl(RECORDS, tmp_path / "sub" / name)
    assert is_gzip(path) == name.endswith(".gz")
    assert [value for _, value in iter_jsonl(path)] == RECORDS


def test_gzip_is_told_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps(r) for r in RECORDS) + "\n"
    disguised = tmp_path / "corpus.jsonl"  # gzipped, named as plain text
    disguised.write_bytes(gzip.compress(lines.encode()))
    plain = tmp_path / "corpus.jsonl.gz"  # plain text, named as gzip
    plain.write_text(lines)
    for path in (disguised, plain):
        assert [value for _, value in iter_jsonl(path)] == RECORDS
        with open_text(path) as fh:
            assert fh.read() == lines


def test_blank_lines_are_skipped_and_numbers_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n\n{"a": \n'))
    with pytest.raises(InvalidRequest, match=r"bad\.jsonl\.gz:3: not valid JSON"):
        list(iter_jsonl(path))
    with pytest.raises(InvalidRequest, match="Queries file not found"):
        list(iter_jsonl(tmp_path / "none.jsonl", what="Queries file"))
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidRequest, match="not a UTF-8 text or gzip file"):
        list(iter_jsonl(binary))
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:30])
    with pytest.raises(InvalidRequest, match="not a UTF-8 text or gzip file"):
        list(iter_jsonl(truncated))


def test_read_json(tmp_path: Path) -> None:
    path = tmp_path / "run.json.gz"
    path.write_bytes(gzip.compress(b'{"q1": {"d1": 1.0}}'))
    assert read_json(path, "Run") == {"q1": {"d1": 1.0}}
    with pytest.raises(InvalidRequest, match="Run file not found"):
        read_json(tmp_path / "none.json", "Run")
    path.write_text('{"q1": ')
    with pytest.raises(InvalidRequest, match=r"run\.json\.gz: not valid JSON"):
        read_json(path, "Run")


def test_read_jsonl_documents(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [
        {"id": "a", "text": "first", "metadata": {"k": 1}},
        {"_id": "b", "title": "Title", "text": "body"},
        {"id": "c", "text": "   "},  # nothing to embed: skipped
        {"_id": 7, "title": "Only a title", "text": ""},
    ]
    write_jsonl(lines, path)
    docs = list(read_jsonl(path))
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("a", "first", {"k": 1}),
        ("b", "Title\nbody", {"title": "Title"}),
        ("7", "Only a title", {"title": "Only a title"}),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "no id"}', r"docs\.jsonl:2: missing 'id'"),
        ("[1, 2]", r"docs\.jsonl:2: expected a JSON object"),
        ("{nope", r"docs\.jsonl:2: not valid JSON"),
        (json.dumps({"id": "x" * 600, "text": "t"}), r"docs\.jsonl:2: invalid document \(id:"),
    ],
)
def test_read_jsonl_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(InvalidRequest, match=message):
        list(read_jsonl(path))
    with pytest.raises(InvalidRequest, match="File not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_demo_corpus_reads() -> None:
    assert DEMO_COLLECTION == "cranfield"
    first = next(read_jsonl(DEMO_CORPUS))
    assert first.id and first.text
