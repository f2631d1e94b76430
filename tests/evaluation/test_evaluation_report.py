"""Report files: JSON, markdown with significance markers, PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InvalidRequest
from evaluation.report import (
    load_run_record,
    markdown_report,
    plot_comparison,
    run_record,
    write_comparison_report,
    write_json,
)
from evaluation.significance import compare

PER_QUERY = {
    "bm25": {f"q{i}": 0.3 + 0.01 * i for i in range(20)},
    "dense": {f"q{i}": 0.6 + 0.01 * (i % 3) for i in range(20)},
    "hybrid": {f"q{i}": 0.3 + 0.01 * i + (0.001 if i % 2 else -0.001) for i in range(20)},
}
AGG = {
    name: {"ndcg@10": sum(v.values()) / len(v), "recall@100": 0.9} for name, v in PER_QUERY.items()
}


def test_markdown_marks_significant_runs() -> None:
    comp = compare(PER_QUERY, baseline="bm25", metric="ndcg@10", n_resamples=2000)
    md = markdown_report(AGG, [comp])
    assert "| run | ndcg@10 | recall@100 |" in md
    assert "| bm25 (baseline) | 0.3950 | 0.9000 |" in md
    assert f"| dense | {AGG['dense']['ndcg@10']:.4f}† | 0.9000 |" in md
    assert f"| hybrid | {AGG['hybrid']['ndcg@10']:.4f} | 0.9000 |" in md  # no marker
    assert "dense vs bm25" in md and "Holm" in md


def test_write_comparison_report(tmp_path: Path) -> None:
    comp = compare(PER_QUERY, baseline="bm25", metric="ndcg@10", n_resamples=500)
    per_query = {run: {q: {"ndcg@10": v} for q, v in pq.items()} for run, pq in PER_QUERY.items()}
    paths = write_comparison_report(tmp_path / "out", AGG, per_query, [comp], baseline="bm25")
    assert {p.name for p in paths.values()} == {"compare.json", "compare.md", "compare.png"}
    for p in paths.values():
        assert p.stat().st_size > 0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["baseline"] == "bm25"
    assert data["runs"]["dense"]["aggregate"]["ndcg@10"] == pytest.approx(AGG["dense"]["ndcg@10"])
    assert data["comparisons"][0]["pairs"][0]["run"] == "dense"
    assert "0.3950" in paths["markdown"].read_text()


def test_two_run_plot_is_per_query_deltas(tmp_path: Path) -> None:
    two = {k: PER_QUERY[k] for k in ("bm25", "dense")}
    path = plot_comparison(two, "ndcg@10", tmp_path / "d.png", baseline="bm25")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_json_has_no_infinity(tmp_path: Path) -> None:
    path = write_json(tmp_path / "x.json", {"t": float("inf"), "v": [1.5]})
    assert json.loads(path.read_text()) == {"t": None, "v": [1.5]}


def test_run_record_round_trip(tmp_path: Path) -> None:
    rec = run_record(
        name="r",
        kind="retrieval",
        config={"mode": "dense"},
        aggregate={"ndcg@10": 0.5},
        per_query={"q1": {"ndcg@10": 0.5}},
        timings={"latency_median_ms": 1.0},
        command="quarry eval retrieval",
    )
    path = write_json(tmp_path / "r.json", rec)
    loaded = load_run_record(path)
    assert loaded["name"] == "r" and loaded["per_query"] == {"q1": {"ndcg@10": 0.5}}
    assert loaded["date"] and loaded["command"] == "quarry eval retrieval"
    run_file = write_json(tmp_path / "r.run.json", {"q1": {"d1": 1.0}})
    with pytest.raises(InvalidRequest, match="that is a ranking"):
        load_run_record(run_file)
