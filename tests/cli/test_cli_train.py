"""``quarry train embedder`` and ``quarry train data`` in-process, on a tiny local backbone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.train import app
from embedder import load_embedder
from embedder.llm import CONFIG_NAME, tiny_backbone, tiny_tokenizer
from embedder.train.data import read_examples
from embedder.train.trainer import TRAINING_RECORD, latest_checkpoint

pytest.importorskip("peft")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_beir_train"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep core's stderr log handler off CliRunner's short-lived stream; one torch thread."""
    from core.settings import Settings

    monkeypatch.setattr("cli.train.setup_cli", lambda: Settings(env="test"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a Hugging Face directory, for ``--backbone``."""
    texts = []
    for name in ("corpus.jsonl", "queries.jsonl"):
        for line in (FIXTURE / name).read_text().splitlines():
            rec = json.loads(line)
            texts.append(f"{rec.get('title', '')} {rec['text']}")
    texts.append("instruct: find the document query:")
    path = tmp_path_factory.mktemp("cli") / "tiny-llama"
    backbone = tiny_backbone("llama", tokenizer=tiny_tokenizer(texts))
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


def _train(backbone_dir: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "embedder",
            "--backbone",
            str(backbone_dir),
            "--out",
            str(out),
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--lr",
            "1e-3",
            "--lora-r",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ],
    )


def test_train_from_beir_then_resume(backbone_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    data = tmp_path / "mined.jsonl"
    args = [
        "--beir",
        str(FIXTURE),
        "--preset",
        "design2",
        "--grad-cache-chunk",
        "3",
        "--hard-negatives",
        "2",
        "--pooling",
        "num_latents=2",
        "--instruction",
        "Find the document",
        "--checkpoint-every",
        "2",
        "--save-data",
        str(data),
    ]
    res = _train(backbone_dir, out, *args)
    assert res.exit_code == 0, res.output
    assert "Trained design2" in res.output and "4 steps on 10 examples" in res.output

    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["preset"] == "design2" and config["pooling"]["num_latents"] == 2
    assert config["query_prefix"] == "Instruct: Find the document\nQuery: "
    record = json.loads((out / TRAINING_RECORD).read_text())
    assert record["data"]["split"] == "train" and record["data"]["hard_negatives"] == 2
    assert record["config"]["grad_cache_chunk"] == 3 and len(record["losses"]) == 4
    assert len(read_examples(data)) == 10
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-0000002"

    emb = load_embedder(str(out), device="cpu")
    assert emb.embed(["ocean water"], kind="query").shape == (1, 32)
    before = emb.embed(["ocean water", "brew coffee"])

    # Resuming retrains steps 3-4 from the step-2 checkpoint and lands on the same model.
    res = _train(backbone_dir, out, *args, "--resume")
    assert res.exit_code == 0, res.output
    again = load_embedder(str(out), device="cpu").embed(["ocean water", "brew coffee"])
    np.testing.assert_allclose(again, before, atol=1e-5)


def test_data_command_then_train_from_jsonl(backbone_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl.gz"
    res = runner.invoke(
        app, ["data", "--beir", str(FIXTURE), "--out", str(data), "--hard-negatives", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "10 examples written" in res.output
    res = _train(backbone_dir, tmp_path / "m", "--data", str(data), "--preset", "design1")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / CONFIG_NAME).read_text())["pooling"]["mode"] == "eos"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "Give exactly one of --data"),
        (["--data", "x.jsonl", "--beir", "y"], "Give exactly one of --data"),
        (["--beir", str(FIXTURE), "--preset", "design7"], "Invalid preset 'design7'"),
        (
            ["--beir", str(FIXTURE), "--instruction", "a", "--query-prefix", "b"],
            "not both",
        ),
        (["--beir", str(FIXTURE), "--pooling", "num_latents"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_give_one_line(
    backbone_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    res = _train(backbone_dir, tmp_path / "m", *extra)
    assert res.exit_code == 1, res.output
    assert "error (invalid_request)" in res.output and message in res.output
    assert "Traceback" not in res.output


# --- quarry train reranker / rerank-run --------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT saved as a Hugging Face directory, for reranker ``--backbone``."""
    from tests.ranker.text.conftest import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("cli-rerank") / "tiny-bert")


def _rerank(bert_dir: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "reranker",
            "--backbone",
            str(bert_dir),
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--negatives",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ],
    )


def test_train_reranker_from_beir_with_a_held_out_share(bert_dir: Path, tmp_path: Path) -> None:
    from ranker.text import load_reranker
    from ranker.text.config import CONFIG_FILE as RERANKER_CONFIG

    out = tmp_path / "li"
    args = ["--kind", "late-interaction", "--beir", str(FIXTURE), "--option", "dim=8"]
    args += ["--max-length", "32", "--holdout", "0.3", "--checkpoint-every", "2"]
    res = _rerank(bert_dir, out, *args)
    assert res.exit_code == 0, res.output
    assert "Trained late-interaction reranker" in res.output and '"reranked"' in res.output
    config = json.loads((out / RERANKER_CONFIG).read_text())
    assert config["kind"] == "late-interaction" and config["options"]["dim"] == 8
    assert config["options"]["max_length"] == 32 and config["backbone_training"] == "full"
    record = json.loads((out / TRAINING_RECORD).read_text())
    held = record["heldout_queries"]
    assert len(held) == 3 and record["data"]["min_grade"] == 1  # 9 judged queries, 30%
    assert record["config"]["loss"] == "listwise" and len(record["losses"]) == 3
    report = json.loads((out / "heldout.json").read_text())
    assert report["heldout_queries"] == held
    assert set(report["first_stage"]) == set(report["reranked"]) == {"ndcg@10", "mrr@10"}
    run = json.loads((out / "heldout.run.json").read_text())
    assert sorted(run) == sorted(held)
    assert latest_checkpoint(out) is not None
    scores = load_reranker(str(out)).score("ocean water", ["the ocean", "bread"])
    assert scores.shape == (2,)


def test_train_reranker_k_fold_then_rerank_run(bert_dir: Path, tmp_path: Path) -> None:
    from tests.ranker.text.test_ranker_text_kfold import TOPICS, write_trec_set

    cands, qrels = write_trec_set(tmp_path / "data")
    out = tmp_path / "folds"
    args = ["--kind", "knrm", "--candidates", str(cands), "--qrels", str(qrels), "--folds", "3"]
    res = _rerank(bert_dir, out, *args, "--head-lr", "0.1", "--loss", "bce")
    assert res.exit_code == 0, res.output
    folds = json.loads((out / "folds.json").read_text())
    assert [f["model"] for f in folds["folds"]] == ["fold-0", "fold-1", "fold-2"]
    for fold in folds["folds"]:
        assert not set(fold["train_queries"]) & set(fold["score_queries"])
    pooled = json.loads((out / "pooled.run.json").read_text())
    assert sorted(pooled) == sorted(TOPICS)
    report = json.loads((out / "pooled.json").read_text())
    assert set(report["reranked"]) == {"ndcg@10", "mrr@10-l2"}  # TREC: min grade 2

    again = tmp_path / "again.run.json"
    res = runner.invoke(
        app,
        [
            "rerank-run",
            "--folds-dir",
            str(out),
            "--candidates",
            str(cands),
            "--out",
            str(again),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(again.read_text()) == pooled
    one = tmp_path / "one.run.json"
    res = runner.invoke(
        app,
        [
            "rerank-run",
            "--reranker",
            str(out / "fold-0"),
            "--candidates",
            str(cands),
            "--out",
            str(one),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert sorted(json.loads(one.read_text())) == sorted(TOPICS)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "exactly one data source"),
        (["--beir", str(FIXTURE), "--data", "x.jsonl"], "exactly one data source"),
        (["--beir", str(FIXTURE), "--kind", "monot5"], "Valid kinds: cross-encoder"),
        (["--beir", str(FIXTURE), "--loss", "hinge"], "Valid losses: listwise, bce"),
        (["--beir", str(FIXTURE), "--folds", "3"], "--folds cross-validates a TREC set"),
        (["--beir", str(FIXTURE), "--option", "dims=3"], "Valid options: max_length"),
        (["--beir", str(FIXTURE), "--backbone-training", "half"], "Valid modes: frozen"),
    ],
)
def test_reranker_bad_arguments_give_one_line(
    bert_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    res = _rerank(bert_dir, tmp_path / "m", *extra)
    assert res.exit_code == 1, res.output
    assert "error (invalid_request)" in res.output and message in res.output
    assert "Traceback" not in res.output
