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
