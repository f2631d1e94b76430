"""Report files: JSON, markdown with significance markers, PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import InvalidRequest
from evaluation.report import (
    SIGNIFICANT_PLOT_MARK,
    comparison_figure,
    load_run_record,
    markdown_report,
    plot_comparison,
    run_record,
    significant_runs,
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
    coverage = {"bm25": {"judged": 21, "evaluated": 20, "judged_absent": 1, "unjudged": 0}}
    paths = write_comparison_report(
        tmp_path / "out", AGG, per_query, [comp], baseline="bm25", coverage=coverage
    )
    assert {p.name for p in paths.values()} == {"compare.json", "compare.md", "compare.png"}
    for p in paths.values():
        assert p.stat().st_size > 0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["baseline"] == "bm25"
    assert data["runs"]["dense"]["aggregate"]["ndcg@10"] == pytest.approx(AGG["dense"]["ndcg@10"])
    assert data["comparisons"][0]["pairs"][0]["run"] == "dense"
    assert "0.3950" in paths["markdown"].read_text()
    assert data["runs"]["bm25"]["coverage"]["judged_absent"] == 1
    assert "coverage" not in data["runs"]["dense"]
    assert "| bm25 | 21 | 20 | 1 | 0 |" in paths["markdown"].read_text()


def _nested(per_query: dict[str, dict[str, float]], **others: float) -> dict[str, Any]:
    """run -> query -> {"ndcg@10": value, "recall@100": value + 0.1 (dense: a constant)}."""
    return {
        run: {q: {"ndcg@10": v, "recall@100": others.get(run, v + 0.1)} for q, v in pq.items()}
        for run, pq in per_query.items()
    }


def _texts(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_plot_has_a_panel_per_metric_and_marks_significant_runs(tmp_path: Path) -> None:
    per_query = _nested(PER_QUERY, dense=0.4)  # dense: recall 0.4 everywhere, bm25 0.4-0.59
    comps = [
        compare(
            {r: {q: v[m] for q, v in pq.items()} for r, pq in per_query.items()},
            baseline="bm25",
            metric=m,
            n_resamples=2000,
        )
        for m in ("ndcg@10", "recall@100")
    ]
    # dense differs on nDCG (always +0.2..0.3); hybrid is bm25 +-0.001 on both.
    assert significant_runs(comps[0], list(per_query)) == {"dense"}
    fig = comparison_figure(
        per_query, ["ndcg@10", "recall@100"], baseline="bm25", comparisons=comps
    )
    axes = fig.axes
    assert len(axes) == 2
    assert [ax.get_ylabel() for ax in axes] == ["ndcg@10", "recall@100"]
    for ax, comp in zip(axes, comps, strict=True):
        marked = significant_runs(comp, list(per_query))
        # one "*" above each significant bar, none for the others
        assert _texts(ax).count(SIGNIFICANT_PLOT_MARK) == len(marked)
        box = ax.get_legend()
        assert box is not None
        legend = [t.get_text() for t in box.get_texts()]
        assert "baseline: bm25" in legend
        assert any("Holm" in t and "p < 0.05" in t for t in legend)
    # recall: dense (constant 0.4) vs bm25 (0.4..0.59) is significant, hybrid is not
    assert significant_runs(comps[1], list(per_query)) == {"dense"}

    path = plot_comparison(
        per_query, ["ndcg@10", "recall@100"], tmp_path / "p.png", comparisons=comps
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_two_run_plot_is_per_query_deltas(tmp_path: Path) -> None:
    two = _nested({k: PER_QUERY[k] for k in ("bm25", "hybrid")})
    comp = compare(
        {r: {q: v["ndcg@10"] for q, v in pq.items()} for r, pq in two.items()},
        baseline="bm25",
        metric="ndcg@10",
        n_resamples=2000,
    )
    fig = comparison_figure(two, ["ndcg@10", "recall@100"], baseline="bm25", comparisons=[comp])
    ndcg, recall = fig.axes
    assert ndcg.get_ylabel() == "Δ ndcg@10" and recall.get_ylabel() == "Δ recall@100"
    assert "hybrid - bm25\n" in ndcg.get_title() and "not significant" in ndcg.get_title()
    assert "(Holm-adjusted randomisation p < 0.05)" in ndcg.get_xlabel()
    assert "significant" not in recall.get_title()  # recall was not tested: no verdict
    assert "Holm" not in recall.get_xlabel()

    two = _nested({k: PER_QUERY[k] for k in ("bm25", "dense")})
    comp = compare(
        {r: {q: v["ndcg@10"] for q, v in pq.items()} for r, pq in two.items()},
        baseline=None,
        metric="ndcg@10",
        n_resamples=2000,
    )
    (ax,) = comparison_figure(two, ["ndcg@10"], comparisons=[comp]).axes
    assert ax.get_title().startswith(f"dense - bm25 {SIGNIFICANT_PLOT_MARK}\n")
    assert ax.get_title().endswith("; significant)")
    path = plot_comparison(two, "ndcg@10", tmp_path / "d.png", baseline="bm25")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_markdown_reports_query_coverage() -> None:
    coverage = {
        "bm25": {"judged": 20, "evaluated": 18, "judged_absent": 2, "unjudged": 3},
        "dense": {"judged": 20, "evaluated": 20, "judged_absent": 0, "unjudged": 0},
    }
    md = markdown_report(AGG, coverage=coverage)
    assert "## Query coverage" in md
    assert "| bm25 | 20 | 18 | 2 | 3 |" in md and "| dense | 20 | 20 | 0 | 0 |" in md
    complete = {run: coverage["dense"] for run in AGG}
    assert "Query coverage" not in markdown_report(AGG, coverage=complete)


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
