"""``quarry eval``: rerank, run and compare in-process, retrieval end to end in a subprocess."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.eval import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs: keep core's stderr log handler off CliRunner's short-lived stream."""
    from core.settings import Settings

    monkeypatch.setattr("cli.eval.setup_cli", lambda: Settings(env="test"))


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
    # 104 is judged but has no candidates (scores 0); 103 has candidates but no judgements.
    assert record["coverage"] == {
        "judged": 3,
        "evaluated": 2,
        "judged_absent": 1,
        "judged_absent_ids": ["104"],
        "unjudged": 1,
    }
    assert (
        "Coverage: 2 of 3 judged queries have candidates; 1 without candidates (scored 0, "
        "counted in the means): 104; 1 unjudged query left out"
    ) in res.output


class _Reverse:
    """Reverses the first-stage order of the candidates it is given."""

    name = "reverse"

    def score(self, query: str, candidates: Sequence[Any]) -> np.ndarray:
        return np.array([c.rank for c in candidates], dtype=np.float64)


@pytest.fixture
def reverse_reranker() -> Iterator[None]:
    from evaluation.rerank import RERANKERS, register_reranker

    register_reranker("reverse", lambda arg, settings: _Reverse())
    try:
        yield
    finally:
        del RERANKERS["reverse"]


@pytest.mark.usefixtures("reverse_reranker")
def test_rerank_depth_keeps_the_tail_and_names_the_run(
    tiny_trec: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ["--metric", "recall@100", "--metric", "recall@100-l2", "--metric", "ndcg@10"]
    full = _rerank(tiny_trec, tmp_path, *metrics)
    assert full.exit_code == 0, full.output
    with caplog.at_level(logging.WARNING):
        res = _rerank(tiny_trec, tmp_path, "--reranker", "reverse", "--depth", "2", *metrics)
    assert res.exit_code == 0, res.output
    assert "| candidates-reverse-d2 |" in res.output
    # its own files: the full first-stage run is still there, unchanged
    first = json.loads((tmp_path / "candidates-none.json").read_text())
    deep = json.loads((tmp_path / "candidates-reverse-d2.json").read_text())
    assert deep["config"]["depth"] == 2 and deep["config"]["reranker"] == "reverse"
    assert deep["run_file"] == "candidates-reverse-d2.run.json"
    assert first["config"]["depth"] is None
    # the top two are reordered, the third candidate stays below them
    run = json.loads((tmp_path / "candidates-reverse-d2.run.json").read_text())
    assert list(run["101"]) == ["p3", "p2", "p1"] and list(run["102"]) == ["p3", "p1"]
    assert run["101"]["p1"] < min(run["101"]["p3"], run["101"]["p2"])
    # recall@100 is the first stage's, query by query (truncating to 2 lost p1 of 101)
    for metric in ("recall@100", "recall@100-l2"):
        assert deep["aggregate"][metric] == first["aggregate"][metric]
        for qid, values in first["per_query"].items():
            assert deep["per_query"][qid][metric] == values[metric]
    assert deep["aggregate"]["ndcg@10"] != first["aggregate"]["ndcg@10"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("covers part of the qrels" in m and "104" in m for m in warned)


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
    # both runs miss judged query 104 and drop unjudged 103: the report says so
    assert "## Query coverage" in md and "| first | 3 | 2 | 1 | 1 |" in md
    assert data["runs"]["second"]["coverage"]["judged_absent_ids"] == ["104"]


def test_compare_plots_every_metric(tiny_trec: Path, tmp_path: Path) -> None:
    assert _rerank(tiny_trec, tmp_path, "--name", "first").exit_code == 0
    assert _rerank(tiny_trec, tmp_path, "--name", "second", "--depth", "1").exit_code == 0
    records = [str(tmp_path / "first.json"), str(tmp_path / "second.json")]
    out = tmp_path / "cmp"
    metrics = ["--metric", "ndcg@10", "--metric", "map-l2", "--metric", "recall@100-l2"]
    res = runner.invoke(
        app, ["compare", *records, "--baseline", "first", "--out", str(out), *metrics]
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compare.json").read_text())
    assert [c["metric"] for c in data["comparisons"]] == ["ndcg@10", "map-l2", "recall@100-l2"]
    from PIL import Image

    with Image.open(out / "compare.png") as png:
        height = png.size[1]
    assert height == round(3 * 4.5 * 110)  # three panels of 4.5 in at 110 dpi, stacked


def test_compare_errors(tiny_trec: Path, tmp_path: Path) -> None:
    assert _rerank(tiny_trec, tmp_path, "--name", "a").exit_code == 0
    a = str(tmp_path / "a.json")
    res = runner.invoke(app, ["compare", a, a])
    assert res.exit_code == 1 and "Two runs are named 'a'" in res.output
    res = runner.invoke(app, ["compare", a, str(tmp_path / "a.run.json")])
    assert res.exit_code == 1 and "that is a ranking" in res.output
    res = runner.invoke(app, ["compare", a, str(tmp_path / "missing.json")])
    assert res.exit_code == 1 and "Run file not found" in res.output


# A hand-made run on tiny_beir's test split (q1: d1=2 d2=1 d5=0; q2: d3=1; q3: d6=2 d7=2
# d8=1). Ranked by score, q1 is d1 d5 d2 and q3 is d7 d4 d6 (d4/d6 tie: file order); q2 is
# absent (scores 0) and q9 is unjudged (ignored). Linear-gain nDCG, log2(rank + 1) discount:
# q1 DCG 2 + 1/2 over IDCG 2 + 1/log2(3); q3 DCG 2 + 2/2 over IDCG 2 + 2/log2(3) + 1/2.
HAND_RUN = {
    "q1": {"d2": 1.0, "d1": 3.0, "d5": 2.0},
    "q3": {"d7": 0.9, "d4": 0.5, "d6": 0.5},
    "q9": {"d1": 1.0},
}
HAND_NDCG = (2.5 / (2 + 1 / math.log2(3)) + 3 / (2.5 + 2 / math.log2(3))) / 3
HAND_RECALL = (1 + 0 + 2 / 3) / 3
HAND_MAP = ((1 + 2 / 3) / 2 + 0 + (1 + 2 / 3) / 3) / 3
PERFECT_TREC = (
    "q1 Q0 d1 1 3 t\nq1 Q0 d2 2 2 t\nq2 Q0 d3 1 1 t\n"
    "q3 Q0 d7 2 3 t\nq3 Q0 d6 1 3 t\nq3 Q0 d8 3 1 t\n"
)


def _hand_run(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hand.run.json"
    path.write_text(json.dumps(HAND_RUN))
    return path


def _score(*args: str):
    return runner.invoke(app, ["run", *args])


def test_run_scores_a_json_run(
    tiny_beir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    run = _hand_run(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="quarry.cli.eval"):
        res = _score("--run", str(run), "--data", str(tiny_beir), "--config", "model=hand")
    assert res.exit_code == 0, res.output
    out = tmp_path / "evaluation/runs/tiny_beir"  # the default folder and name
    record = json.loads((out / "hand.json").read_text())
    assert record["kind"] == "run" and record["name"] == "hand"
    agg = record["aggregate"]
    assert list(agg) == ["ndcg@10", "recall@100", "mrr@10", "map"]
    assert agg["ndcg@10"] == pytest.approx(HAND_NDCG, abs=1e-9)
    assert agg["recall@100"] == pytest.approx(HAND_RECALL, abs=1e-9)
    assert agg["mrr@10"] == pytest.approx(2 / 3, abs=1e-9)
    assert agg["map"] == pytest.approx(HAND_MAP, abs=1e-9)
    assert set(record["per_query"]) == {"q1", "q2", "q3"}
    assert record["per_query"]["q2"] == dict.fromkeys(agg, 0.0)
    assert record["per_query"]["q1"]["recall@100"] == 1.0
    assert record["config"]["dataset"] == {
        "name": "tiny_beir",
        "folder": str(tiny_beir.resolve()),
        "split": "test",
        "queries": 3,
        "judgements": 7,
    }
    assert record["config"]["run"] == {
        "file": str(run.resolve()),
        "format": "json",
        "queries": 3,
        "judged_absent": 1,
        "unjudged": 1,
    }
    assert record["config"]["model"] == "hand"
    assert record["timings"] == {} and record["command"].startswith("quarry")
    assert record["run_file"] == "hand.run.json"
    assert list(json.loads((out / "hand.run.json").read_text())["q1"]) == ["d1", "d5", "d2"]
    assert f"| hand | {HAND_NDCG:.4f} | {HAND_RECALL:.4f} | 0.6667 |" in res.output
    assert (
        "Coverage: 2 of 3 judged queries have a ranking; 1 without a ranking (scored 0, "
        "counted in the means): q2; 1 unjudged query left out"
    ) in res.output
    assert record["coverage"] == {
        "judged": 3,
        "evaluated": 2,
        "judged_absent": 1,
        "judged_absent_ids": ["q2"],
        "unjudged": 1,
    }
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "hand.run.json covers part of the qrels: 2 of 3 judged queries have a ranking; 1 "
        "without a ranking (scored 0, counted in the means): q2; 1 unjudged query left out"
    ]


def test_run_trec_runs_feed_compare(tiny_beir: Path, tmp_path: Path) -> None:
    trec = tmp_path / "in" / "perfect.trec"
    trec.parent.mkdir()
    trec.write_text(PERFECT_TREC)
    out = tmp_path / "out"
    for path in (_hand_run(tmp_path / "in"), trec):
        res = _score("--run", str(path), "--data", str(tiny_beir), "--out", str(out))
        assert res.exit_code == 0, res.output
    perfect = json.loads((out / "perfect.json").read_text())
    assert perfect["config"]["run"]["format"] == "trec"
    assert perfect["aggregate"] == pytest.approx(
        {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map": 1.0}
    )
    assert "Coverage:" not in res.output  # the perfect run covers every judged query
    assert perfect["coverage"]["judged_absent"] == 0 and perfect["coverage"]["unjudged"] == 0
    cmp = tmp_path / "cmp"
    res = runner.invoke(
        app,
        [
            "compare",
            str(out / "hand.json"),
            str(out / "perfect.json"),
            "--baseline",
            "hand",
            "--metric",
            "ndcg@10",
            "--metric",
            "recall@100",
            "--out",
            str(cmp),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((cmp / "compare.json").read_text())
    ndcg, recall = data["comparisons"]
    assert ndcg["metric"] == "ndcg@10" and recall["metric"] == "recall@100"
    pair = ndcg["pairs"][0]
    assert (pair["baseline"], pair["run"]) == ("hand", "perfect")
    assert pair["n_queries"] == 3  # q2, absent from the hand run, is compared as 0
    assert pair["mean_baseline"] == pytest.approx(HAND_NDCG, abs=1e-9)
    assert pair["delta"] == pytest.approx(1 - HAND_NDCG, abs=1e-9)
    assert recall["pairs"][0]["delta"] == pytest.approx(1 - HAND_RECALL, abs=1e-9)
    assert (cmp / "compare.png").stat().st_size > 0


def test_run_with_trec_qrels_and_meta(
    tiny_trec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "dl.txt"
    run.write_text("101 Q0 p1 1 2.0 x\n102 Q0 p3 1 1.0 x\n")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"model": "from-meta", "training": {"steps": 50, "lr": 1e-4}}))
    res = _score(
        "--run",
        str(run),
        "--qrels",
        str(tiny_trec / "qrels.txt"),
        "--metric",
        "recall@100",
        "--metric",
        "ndcg@10",
        "--meta",
        str(meta),
        "--config",
        "model=cli",
        "--config",
        "steps=1000",
        "--config",
        "fp16=true",
        "--config",
        "version=4.40",
        "--config",
        "note=a=b",
    )
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "evaluation/runs/qrels/dl.json").read_text())
    # 101 finds p1 (3) of p1, p2; 102 finds p3; 104 (p9) is absent.
    assert record["aggregate"] == pytest.approx(
        {"recall@100": (0.5 + 1 + 0) / 3, "ndcg@10": (3 / (3 + 1 / math.log2(3)) + 1) / 3},
        abs=1e-9,
    )
    assert list(record["aggregate"]) == ["recall@100", "ndcg@10"]
    cfg = record["config"]
    assert cfg["dataset"] == {
        "name": "qrels",
        "qrels": str((tiny_trec / "qrels.txt").resolve()),
        "queries": 3,
        "judgements": 5,
    }
    assert cfg["run"]["format"] == "trec" and cfg["run"]["judged_absent"] == 1
    assert cfg["metrics"] == ["recall@100", "ndcg@10"]
    assert cfg["model"] == "cli"  # --config wins over --meta
    assert cfg["training"] == {"steps": 50, "lr": 1e-4}
    assert cfg["steps"] == 1000 and cfg["fp16"] is True
    assert cfg["version"] == "4.40" and cfg["note"] == "a=b"  # kept as written


def test_run_errors_are_one_line(tiny_beir: Path, tiny_trec: Path, tmp_path: Path) -> None:
    run = _hand_run(tmp_path)
    data = ["--data", str(tiny_beir)]
    qrels = ["--qrels", str(tiny_trec / "qrels.txt")]
    cases = [
        ([], "Pass exactly one of --data (a BEIR folder) and --qrels"),
        ([*data, *qrels], "Pass exactly one of --data"),
        ([*qrels, "--split", "test"], "--split selects the qrels of a BEIR folder"),
        ([*data, "--split", "dev"], "No qrels for split 'dev'"),
        ([*data, "--metric", "ndcg@ten"], "Invalid metric 'ndcg@ten'"),
        ([*data, "--config", "steps"], "--config expects KEY=VALUE, got 'steps'"),
        ([*data, "--config", "metrics=all"], "--config/--meta cannot set 'metrics'"),
        ([*data, "--meta", str(tmp_path / "none.json")], "Meta file not found"),
    ]
    for extra, message in cases:
        res = _score("--run", str(run), "--out", str(tmp_path / "out"), *extra)
        assert res.exit_code == 1, (extra, res.output)
        assert "error (invalid_request): " + message in res.output, (extra, res.output)
        assert "Traceback" not in res.output
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    res = _score("--run", str(run), *data, "--meta", str(listed))
    assert res.exit_code == 1 and "list.json: expected a JSON object, got list" in res.output
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2\n")
    res = _score("--run", str(bad), *data, "--out", str(tmp_path / "out"))
    assert res.exit_code == 1 and "bad.trec:2: expected a TREC run line" in res.output
    assert not (tmp_path / "out").exists()


def test_run_refuses_to_overwrite_its_input(tiny_beir: Path, tmp_path: Path) -> None:
    run = _hand_run(tmp_path)
    before = run.read_text()
    res = _score("--run", str(run), "--data", str(tiny_beir), "--out", str(tmp_path))
    assert res.exit_code == 1 and "would overwrite the run being scored" in res.output
    assert run.read_text() == before and not (tmp_path / "hand.json").exists()
    res = _score(
        "--run", str(run), "--data", str(tiny_beir), "--out", str(tmp_path), "--name", "again"
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "again.json").read_text())["name"] == "again"


def _quarry(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUARRY_DATA_DIR": str(tmp_path / "data")}
    env.pop("QUARRY_BROKER_URL", None)
    env.pop("QUARRY_DATABASE_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from cli.eval import app; app(prog_name='quarry eval')",
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
    assert (record["config"]["bm25_k1"], record["config"]["bm25_b"]) == (0.9, 0.4)

    # BM25 parameters of a new collection; the run records them and its scores follow them.
    args = ["retrieval", "--data", str(tiny_beir), "--mode", "lexical", "--no-progress"]
    k12 = _quarry(tmp_path, *args, "--collection", "k12", "--bm25-k1", "1.2", "--bm25-b", "0.75")
    assert k12.returncode == 0, k12.stderr
    rec3 = json.loads((tmp_path / "evaluation/runs/tiny_beir/k12-lexical.json").read_text())
    assert (rec3["config"]["bm25_k1"], rec3["config"]["bm25_b"]) == (1.2, 0.75)
    run1 = json.loads(
        (tmp_path / "evaluation/runs/tiny_beir/tiny_beir-lexical.run.json").read_text()
    )
    run3 = json.loads((tmp_path / "evaluation/runs/tiny_beir/k12-lexical.run.json").read_text())
    assert run3["q1"].keys() == run1["q1"].keys() and run3["q1"] != run1["q1"]
    # the existing collection keeps its own; asking for others is refused
    clash = _quarry(tmp_path, *args, "--bm25-k1", "1.2")
    assert clash.returncode == 1
    assert "searches with BM25 k1=0.9 b=0.4, not k1=1.2" in clash.stderr + clash.stdout
    bad = _quarry(tmp_path, *args, "--collection", "bad", "--bm25-b", "1.5")
    assert bad.returncode == 2 and "--bm25-b" in bad.stderr


def test_eval_is_registered_in_quarry() -> None:
    import cli.main

    names = [group.name for group in cli.main.app.registered_groups]
    if "eval" not in names:
        pytest.skip("cli.main does not register `quarry eval` yet (the lead adds it)")
    out = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "retrieval" in out.stdout and "rerank" in out.stdout and "compare" in out.stdout
    assert "Score a precomputed run" in out.stdout
