"""The contrastive trainer on tiny random-config models: learning, GradCache, checkpoints, output.

The backbone is a 2-layer width-32 Llama saved as a Hugging Face directory with a word-level
tokenizer over the fixture's words; examples come from ``tests/fixtures/tiny_beir_train``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest
from embedder import EmbedderPool, load_embedder
from embedder.llm import CONFIG_NAME, LLMEmbedder, LLMEmbeddingModel, tiny_backbone, tiny_tokenizer
from embedder.train.data import TrainExample
from embedder.train.trainer import (
    CHECKPOINTS_DIR,
    TRAINING_RECORD,
    EmbedderTrainer,
    TrainConfig,
    latest_checkpoint,
    lr_factor,
)
from service.training import examples_from_beir

pytest.importorskip("peft")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_beir_train"


def _fixture_texts() -> list[str]:
    texts = []
    for name in ("corpus.jsonl", "queries.jsonl"):
        for line in (FIXTURE / name).read_text().splitlines():
            rec = json.loads(line)
            texts.append(f"{rec.get('title', '')} {rec['text']}")
    return [*texts, "query:"]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (random weights) with a tokenizer that knows every fixture word."""
    path = tmp_path_factory.mktemp("train") / "tiny-llama"
    backbone = tiny_backbone("llama", tokenizer=tiny_tokenizer(_fixture_texts()))
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def examples() -> list[TrainExample]:
    return examples_from_beir(FIXTURE, hard_negatives=2, seed=0)


def _config(backbone_dir: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "backbone": str(backbone_dir),
        "preset": "design5",
        "steps": 6,
        "batch_size": 4,
        "lr": 1e-3,
        "head_lr": 1e-3,
        "warmup_steps": 1,
        "hard_negatives": 1,
        "lora_r": 4,
        "lora_alpha": 8,
        "device": "cpu",
    }
    values.update(overrides)
    if values["preset"] != "design1":  # design 1's EOS pooling has no options
        values.setdefault("pooling_options", {"num_latents": 2})
    return TrainConfig(**values)


def _trainable(trainer: EmbedderTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _grads(trainer: EmbedderTrainer) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
        for n, p in trainer.model.named_parameters()
        if p.requires_grad
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Width-32 models gain nothing from intra-op threads, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- configuration and schedule ---------------------------------------------------------------


def test_schedule_warms_up_then_decays_linearly() -> None:
    factors = [lr_factor(s, warmup=2, total=6) for s in range(7)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert lr_factor(0, warmup=0, total=4) == 1.0


def test_config_defaults_follow_the_paper() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.warmup_steps, cfg.steps, cfg.temperature) == (1e-5, 100, 1000, 0.05)
    assert (cfg.lora, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (True, 16, 32, 0.1)
    assert cfg.hard_negatives == 1 and cfg.head_lr == 1e-4
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("preset", "design9", "Valid presets"),
        ("steps", 0, "steps must be >= 1"),
        ("grad_cache_chunk", 0, "grad_cache_chunk"),
        ("lr", 0.0, "lr must be > 0"),
        ("temperature", -1.0, "temperature"),
        ("lora_dropout", 1.0, "lora_dropout"),
    ],
)
def test_config_refuses_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        TrainConfig(**{field: value})


def test_batches_cover_each_epoch_once(backbone_dir: Path, examples: list[TrainExample]) -> None:
    trainer = EmbedderTrainer(_config(backbone_dir, batch_size=3), examples, "unused")
    epoch = np.concatenate([trainer.batch_examples(s) for s in range(3)])  # 10 // 3 = 3 batches
    assert len(set(epoch.tolist())) == 9
    np.testing.assert_array_equal(trainer.batch_examples(1), trainer.batch_examples(1))
    assert not np.array_equal(trainer.batch_examples(0), trainer.batch_examples(3))


def test_relevant_documents_are_never_negatives(
    backbone_dir: Path, examples: list[TrainExample]
) -> None:
    # With every example in one batch, q1's and q3's second relevant documents sit in the batch
    # as other examples' positives, and some positives recur as other queries' hard negatives
    # (random fills): each leaves the softmax of the queries it is relevant to, and only those.
    trainer = EmbedderTrainer(_config(backbone_dir, batch_size=10), examples, "unused")
    batch = trainer._batch(0)
    idx = trainer.batch_examples(0)
    doc_text = {row: text for text, row in trainer._doc_rows.items()}
    relevant = {(e.query, e.positive) for e in examples}
    candidates = [doc_text[int(r)] for r in batch.docs]
    exclude = batch.exclude.numpy()
    for i, example in enumerate(examples[k] for k in idx):
        for j, text in enumerate(candidates):
            assert exclude[i, j] == (j != i and (example.query, text) in relevant)
    assert exclude[:, :10].sum() == 4  # the two queries with two relevant documents, twice


# --- learning and gradients -------------------------------------------------------------------


def test_training_reduces_the_loss(
    backbone_dir: Path, examples: list[TrainExample], tmp_path: Path
) -> None:
    cfg = _config(backbone_dir, steps=24, warmup_steps=0, grad_cache_chunk=3)
    result = EmbedderTrainer(cfg, examples, tmp_path / "out", progress=False).fit()
    assert result.finished and len(result.losses) == 24
    assert np.mean(result.losses[-6:]) < 0.5 * np.mean(result.losses[:6])


@pytest.mark.parametrize(("preset", "lora"), [("design5", True), ("design1", False)])
def test_grad_cache_equals_one_big_batch(
    backbone_dir: Path, examples: list[TrainExample], preset: str, lora: bool
) -> None:
    def grads(chunk: int | None) -> tuple[float, dict[str, torch.Tensor]]:
        cfg = _config(
            backbone_dir,
            preset=preset,
            lora=lora,
            lora_dropout=0.0,
            batch_size=6,
            hard_negatives=2,
            grad_cache_chunk=chunk,
        )
        trainer = EmbedderTrainer(cfg, examples, "unused")
        if lora:  # LoRA B starts at zero, which would leave A's gradient at zero
            with torch.no_grad():
                for name, param in trainer.model.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        loss = trainer.compute_gradients(0)
        return loss, _grads(trainer)

    loss_big, big = grads(None)
    for chunk in (1, 4):
        loss_gc, cached = grads(chunk)
        assert loss_gc == pytest.approx(loss_big, rel=1e-5)
        assert big.keys() == cached.keys()
        assert sum(float(g.abs().sum()) for g in big.values()) > 0
        for name in big:
            torch.testing.assert_close(cached[name], big[name], atol=1e-5, rtol=1e-4, msg=name)


def test_grad_cache_replays_dropout(backbone_dir: Path, examples: list[TrainExample]) -> None:
    """Both GradCache passes see the same dropout masks: with one chunk per text kind, the
    gradient equals the plain path's from the same RNG state, and differs for another state."""

    def grads(chunk: int | None, seed: int) -> dict[str, torch.Tensor]:
        cfg = _config(backbone_dir, lora_dropout=0.5, grad_cache_chunk=chunk, batch_size=4)
        trainer = EmbedderTrainer(cfg, examples, "unused")
        torch.manual_seed(seed)
        trainer.compute_gradients(0)
        return _grads(trainer)

    plain, cached, reseeded = grads(None, 7), grads(100, 7), grads(None, 8)
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.allclose(reseeded[n], plain[n]) for n in plain if "lora_B" in n)


# --- checkpoints and resume -------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run(
    backbone_dir: Path, examples: list[TrainExample], tmp_path: Path
) -> None:
    cfg = _config(backbone_dir, steps=6, warmup_steps=2, grad_cache_chunk=3, checkpoint_every=3)
    straight = EmbedderTrainer(replace(cfg, checkpoint_every=0), examples, tmp_path / "a")
    straight.fit()

    first = EmbedderTrainer(cfg, examples, tmp_path / "b", progress=False)
    interrupted = first.fit(stop_at=3)
    assert not interrupted.finished and interrupted.step == 3
    assert not (tmp_path / "b" / CONFIG_NAME).exists()
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt is not None and ckpt.name == "step-0000003"
    assert isinstance(load_embedder(str(ckpt / "model"), device="cpu"), LLMEmbedder)

    resumed = EmbedderTrainer(cfg, examples, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 3
    result = resumed.fit()
    assert result.finished
    assert result.losses == pytest.approx(straight.losses, rel=1e-5)
    want, got = _trainable(straight), _trainable(resumed)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)
    texts = ["lava from a volcano", "ocean water"]
    np.testing.assert_allclose(
        load_embedder(str(tmp_path / "b"), device="cpu").embed(texts, kind="query"),
        load_embedder(str(tmp_path / "a"), device="cpu").embed(texts, kind="query"),
        atol=1e-5,
    )


def test_checkpoints_are_pruned_and_settings_checked(
    backbone_dir: Path, examples: list[TrainExample], tmp_path: Path
) -> None:
    cfg = _config(backbone_dir, steps=5, checkpoint_every=1, keep_checkpoints=2)
    EmbedderTrainer(cfg, examples, tmp_path, progress=False).fit()
    names = sorted(p.name for p in (tmp_path / CHECKPOINTS_DIR).iterdir())
    assert names == ["step-0000003", "step-0000004"]
    with pytest.raises(InvalidRequest, match="already holds a trained model"):
        EmbedderTrainer(cfg, examples, tmp_path)
    with pytest.raises(InvalidRequest, match=r"other settings \(lr: 0.001 -> 0.01\)"):
        EmbedderTrainer(replace(cfg, lr=1e-2), examples, tmp_path, resume=True)
    # Runtime settings may change on resume.
    EmbedderTrainer(replace(cfg, checkpoint_every=0, log_every=3), examples, tmp_path, resume=True)


# --- the trained directory --------------------------------------------------------------------


def test_trained_directory_loads_and_embeds_by_name(
    backbone_dir: Path, examples: list[TrainExample], tmp_path: Path
) -> None:
    out = tmp_path / "trained"
    cfg = _config(backbone_dir, steps=3, query_prefix="query: ")
    trainer = EmbedderTrainer(cfg, examples, out, progress=False, metadata={"data": "fixture"})
    trainer.fit()

    saved = json.loads((out / CONFIG_NAME).read_text())
    assert saved["preset"] == "design5" and saved["adapter"] is True
    assert saved["query_prefix"] == "query: "
    assert saved["backbone"]["source"] == str(backbone_dir.resolve())
    record = json.loads((out / TRAINING_RECORD).read_text())
    assert record["steps"] == 3 and len(record["losses"]) == 3 and record["data"] == "fixture"
    assert record["config"] == cfg.to_dict()

    texts = ["lava from a volcano", "brew coffee"]
    expected = LLMEmbedder(trainer.model, device="cpu").embed(texts, kind="query")
    loaded = load_embedder(str(out), device="cpu")
    np.testing.assert_allclose(loaded.embed(texts, kind="query"), expected, atol=1e-5)
    pooled = EmbedderPool("cpu").get(str(out))
    np.testing.assert_allclose(pooled.embed(texts, kind="query"), expected, atol=1e-5)
    # The instruction is part of the model: a query embeds as "query: " + text.
    np.testing.assert_allclose(
        loaded.embed(["query: brew coffee"]), loaded.embed(["brew coffee"], kind="query"), atol=1e-6
    )


def test_full_fine_tuning_saves_the_backbone(
    backbone_dir: Path, examples: list[TrainExample], tmp_path: Path
) -> None:
    cfg = _config(backbone_dir, preset="design1", lora=False, steps=2)
    trainer = EmbedderTrainer(cfg, examples, tmp_path, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.backbone.named_parameters()}
    trainer.fit()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.backbone.named_parameters())
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["backbone"]["source"] == "backbone" and saved["adapter"] is False
    texts = ["music concert"]
    expected = LLMEmbedder(trainer.model, device="cpu").embed(texts)
    np.testing.assert_allclose(
        LLMEmbedder.load(tmp_path, device="cpu").embed(texts), expected, atol=1e-5
    )
    assert isinstance(LLMEmbeddingModel.load(tmp_path), LLMEmbeddingModel)


def test_too_few_examples_for_the_batch(backbone_dir: Path, examples: list[TrainExample]) -> None:
    with pytest.raises(InvalidRequest, match="exceeds the 10 training examples"):
        EmbedderTrainer(_config(backbone_dir, batch_size=11), examples, "unused")
    with pytest.raises(InvalidRequest, match="No training examples"):
        EmbedderTrainer(_config(backbone_dir), [], "unused")
