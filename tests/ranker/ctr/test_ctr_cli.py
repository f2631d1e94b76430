"""``quarry train ctr`` on a tiny CSV log writes loadable models and a metrics.json;
``quarry eval ctr`` compares two of them (mean ± std, paired per-user tests, PNG, markdown)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.eval import app as eval_app
from cli.train import app as train_app
from ranker.ctr import load_model
from tests.ranker.ctr.conftest import synthetic_log, write_log_files

runner = CliRunner()


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No logging setup on CliRunner's short-lived streams; one torch thread."""
    from core.settings import Settings

    monkeypatch.setattr("cli.train.setup_cli", lambda: Settings(env="test"))
    monkeypatch.setattr("cli.eval.setup_cli", lambda: Settings(env="test"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def log_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_log_files(synthetic_log(n=900, seed=2), tmp_path_factory.mktemp("log"))


def train(out: Path, files: tuple[Path, Path], *extra: str) -> dict:
    inter, items = files
    args = [
        "ctr",
        "--interactions",
        str(inter),
        "--items",
        str(items),
        "--user-col",
        "uid",
        "--item-col",
        "iid",
        "--time-col",
        "ts",
        "--rating-col",
        "stars",
        "--category-col",
        "genres",
        "--epochs",
        "1",
        "--embed-dim",
        "4",
        "--mlp",
        "8",
        "--max-history",
        "30",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]
    result = runner.invoke(train_app, args)
    assert result.exit_code == 0, result.output
    assert "test GAUC" in result.output
    return json.loads((out / "metrics.json").read_text())


def test_train_then_eval_ctr(tmp_path: Path, log_files: tuple[Path, Path]) -> None:
    sdim = train(tmp_path / "sdim", log_files, "--model", "sdim", "--hashes", "4", "--seeds", "1,2")
    dare = train(
        tmp_path / "dare", log_files, "--model", "dare", "--top-k", "4", "--option", "dropout=0.1"
    )
    assert [s["seed"] for s in sdim["seeds"]] == [1, 2] and dare["config"]["dropout"] == 0.1
    for seed in (1, 2):
        model = load_model(tmp_path / "sdim" / f"seed-{seed}")
        assert model.kind == "sdim" and model.config.hashes == 4
        state = model.encode(model.catalogue.rows(["m1", "m2", "m3"]))
        assert model.score(state, model.catalogue.rows(["m4", "nope"])).shape == (2,)
    assert sdim["data"]["test_fingerprint"] == dare["data"]["test_fingerprint"]

    out = tmp_path / "report"
    result = runner.invoke(
        eval_app,
        [
            "ctr",
            str(tmp_path / "sdim" / "metrics.json"),
            str(tmp_path / "dare"),
            "--baseline",
            "sdim",
            "--out",
            str(out),
            "--n-resamples",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| sdim (baseline) | sdim | 2 |" in result.output and "dare vs sdim" in result.output
    report = json.loads((out / "ctr.json").read_text())
    pair = report["comparison"]["pairs"][0]
    assert (pair["baseline"], pair["run"]) == ("sdim", "dare")
    # The mean of the paired per-user values is the GAUC averaged over seeds.
    for name, mean in (("sdim", pair["mean_baseline"]), ("dare", pair["mean_run"])):
        assert mean == pytest.approx(report["runs"][name]["summary"]["test"]["gauc"]["mean"])
    for name in ("ctr.md", "ctr.png", "ctr-users.png"):
        assert (out / name).stat().st_size > 0


def test_bad_options_fail_with_one_line(tmp_path: Path, log_files: tuple[Path, Path]) -> None:
    result = runner.invoke(train_app, ["ctr", "--model", "x", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "Unknown model 'x'. Valid models: din, din-short, sdim, dare, twin" in result.output
    result = runner.invoke(train_app, ["ctr", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--movielens" in result.output
    other = tmp_path / "run.json"
    other.write_text(json.dumps({"name": "bm25", "aggregate": {}, "per_query": {}}))
    result = runner.invoke(eval_app, ["ctr", str(other)])
    assert result.exit_code == 1 and "not a `quarry train ctr` metrics.json" in result.output
