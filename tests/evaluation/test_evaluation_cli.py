"""``quarry eval``: rerank and compare in-process, retrieval end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs: keep core's stderr log handler off CliRunner's short-lived stream."""
    from core.settings import Settings

    monkeypatch.setattr("evaluation.cli.setup_cli", lambda: Settings(env="test"))


def _rerank(tiny_trec: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "rerank",
            "--candidates",
            str(tiny_trec / "candidates.json"),
            "--qrels",
            str(tiny_trec / "qrels.txt"),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ],
    )


def test_rerank_writes_results_and_run(tiny_trec: Path, tmp_path: Path) -> None:
    res = _rerank(tiny_trec, tmp_path, "--metric", "ndcg@10", "--metric", "mrr@10")
    assert res.exit_code == 0, res.output
    assert "| candidates-none | 0.4398 |" in res.output
    record = json.loads((tmp_path / "candidates-none.json").read_text())
    assert record["kind"] == "rerank" and record["config"]["reranker"] == "none"
    assert record["aggregate"]["ndcg@10"] == pytest.approx(0.439820, abs=1e-6)
    assert set(record["per_query"]) == {"101", "102", "104"}
    assert record["command"].startswith("quarry") and record["date"]
    assert record["run_file"] == "candidates-none.run.json"
    run = json.loads((tmp_path / "candidates-none.run.json").read_text())
    assert list(run["101"]) == ["p2", "p3", "p1"]


def test_rerank_errors_are_one_line(tiny_trec: Path, tmp_path: Path) -> None:
    res = _rerank(tiny_trec, tmp_path, "--reranker", "magic")
    assert res.exit_code == 1
    assert "error (invalid_request): Unknown reranker 'magic'" in res.output
    assert "Traceback" not in res.output
    res = _rerank(tiny_trec, tmp_path, "--metric", "ndcg@ten")
    assert res.exit_code == 1 and "Invalid metric 'ndcg@ten'" in res.output


def test_compare_writes_json_markdown_png(tiny_trec: Path, tmp_path: Path) -> None:
    assert _rerank(tiny_trec, tmp_path, "--name", "first").exit_code == 0
    assert _rerank(tiny_trec, tmp_path, "--name", "second", "--depth", "1").exit_code == 0
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "first.json"),
            str(tmp_path / "second.json"),
            "--baseline",
            "first",
            "--metric",
            "ndcg@10",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    for suffix in ("json", "md", "png"):
        assert (out / f"compare.{suffix}").stat().st_size > 0
    md = (out / "compare.md").read_text()
    assert "first (baseline)" in md and "0.4398" in md and "second vs first" in md
    data = json.loads((out / "compare.json").read_text())
    assert data["comparisons"][0]["pairs"][0]["n_queries"] == 3


def test_compare_errors(tiny_trec: Path, tmp_path: Path) -> None:
    assert _rerank(tiny_trec, tmp_path, "--name", "a").exit_code == 0
    a = str(tmp_path / "a.json")
    res = runner.invoke(app, ["compare", a, a])
    assert res.exit_code == 1 and "Two runs are named 'a'" in res.output
    res = runner.invoke(app, ["compare", a, str(tmp_path / "a.run.json")])
    assert res.exit_code == 1 and "that is a ranking" in res.output
    res = runner.invoke(app, ["compare", a, str(tmp_path / "missing.json")])
    assert res.exit_code == 1 and "Run file not found" in res.output


def _quarry(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUARRY_DATA_DIR": str(tmp_path / "data")}
    env.pop("QUARRY_BROKER_URL", None)
    env.pop("QUARRY_DATABASE_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from evaluation.cli import app; app(prog_name='quarry eval')",
            *args,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_retrieval_cli_end_to_end(tiny_beir: Path, tmp_path: Path) -> None:
    out = _quarry(tmp_path, "retrieval", "--data", str(tiny_beir), "--mode", "lexical")
    assert out.returncode == 0, out.stderr
    assert "| tiny_beir-lexical |" in out.stdout and "p95 ms" in out.stdout
    record = json.loads((tmp_path / "evaluation/runs/tiny_beir/tiny_beir-lexical.json").read_text())
    assert record["config"]["mode"] == "lexical" and record["config"]["collection"] == "tiny_beir"
    assert record["config"]["dataset"]["queries"] == 3
    assert record["timings"]["indexed"] == 8
    assert (tmp_path / "evaluation/runs/tiny_beir/tiny_beir-lexical.run.json").is_file()
    assert "searching (lexical)" in out.stderr  # the progress bar
    again = _quarry(tmp_path, "retrieval", "--data", str(tiny_beir), "--mode", "lexical")
    assert again.returncode == 0, again.stderr
    rec2 = json.loads((tmp_path / "evaluation/runs/tiny_beir/tiny_beir-lexical.json").read_text())
    assert rec2["timings"]["indexed"] == 0 and rec2["aggregate"] == record["aggregate"]


def test_eval_is_registered_in_quarry() -> None:
    import core.cli

    names = [group.name for group in core.cli.app.registered_groups]
    if "eval" not in names:
        pytest.skip("core.cli does not register `quarry eval` yet (the lead adds it)")
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", "eval", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "retrieval" in out.stdout and "rerank" in out.stdout and "compare" in out.stdout
