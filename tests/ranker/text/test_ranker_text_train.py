"""The reranker trainer on tiny models: it learns, checkpoints resume exactly, micro-batches
give the full-batch gradient, the frozen-backbone cache changes nothing, settings are checked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest
from embedder.train.data import TrainExample
from embedder.train.trainer import CHECKPOINTS_DIR, TRAINING_RECORD, latest_checkpoint
from ranker.text import LoadOptions, load_reranker
from ranker.text.config import BACKBONE_DIR, CONFIG_FILE
from ranker.text.train.loss import bce_loss, listwise_loss, rerank_loss
from ranker.text.train.trainer import RerankerTrainer, RerankTrainConfig
from service.training import examples_from_beir
from tests.ranker.text.conftest import BEIR_TRAIN

pytest.importorskip("peft")

CPU = LoadOptions(device="cpu")

#: A planted task: each query has one relevant document among the others of the pool.
PLANTED = [
    ("lava from a volcano", "lava flows from the crater of an active volcano"),
    ("how to bake bread", "knead the dough and bake bread in the oven"),
    ("stock market crash", "shares fell as the stock market crash spread"),
    ("pasta recipe", "boiling pasta with a tomato sauce recipe"),
]
POOL = [d for _, d in PLANTED]


def planted_examples() -> list[TrainExample]:
    return [TrainExample(q, d, tuple(x for x in POOL if x != d)) for q, d in PLANTED]


def config(kind: str, bert: Path, llama: Path, **over: Any) -> RerankTrainConfig:
    base: dict[str, Any] = {
        "kind": kind,
        "backbone": str(llama if kind == "llm" else bert),
        "steps": 30,
        "batch_size": 4,
        "negatives": 3,
        "warmup_steps": 0,
        "device": "cpu",
        "lora_r": 4,
    }
    if kind == "late-interaction":
        base["options"] = {"dim": 16, "query_length": 8}
    base.update(over)
    return RerankTrainConfig(**base)


TRAINED = [
    ("cross-encoder", {"lr": 5e-3, "head_lr": 3e-2, "steps": 60}),
    ("late-interaction", {"lr": 1e-3, "head_lr": 1e-2}),
    ("knrm", {"head_lr": 0.1, "backbone_training": "full", "lr": 1e-2}),
    # A random decoder has to learn to route the match to the answer position: slower.
    ("llm", {"lr": 1e-2, "steps": 150, "lora_r": 16, "lora_dropout": 0.0}),
    # Query likelihood: the planted query must become the likeliest question of its passage.
    (
        "llm",
        {
            "lr": 1e-2,
            "steps": 150,
            "lora_r": 16,
            "lora_dropout": 0.0,
            "options": {"scoring": "query-likelihood"},
        },
    ),
    ("dense", {"lr": 1e-3}),
]
TRAINED_IDS = ["cross-encoder", "late-interaction", "knrm", "llm", "llm-likelihood", "dense"]


@pytest.mark.parametrize(("kind", "over"), TRAINED, ids=TRAINED_IDS)
def test_toy_reranker_learns_to_rank_the_planted_document_first(
    kind: str, over: dict[str, Any], tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    cfg = config(kind, tiny_bert, tiny_llama, **over)
    result = RerankerTrainer(cfg, planted_examples(), tmp_path / kind, progress=False).fit()
    assert result.finished and np.isfinite(result.losses).all()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    reranker = load_reranker(str(tmp_path / kind), CPU)
    for query, relevant in PLANTED:
        scores = reranker.score(query, POOL)
        assert POOL[int(np.argmax(scores))] == relevant, (query, scores)
    record = json.loads((tmp_path / kind / TRAINING_RECORD).read_text())
    assert record["config"]["kind"] == kind and record["steps"] == cfg.steps
    assert record["config"]["backbone_training"] == over.get(
        "backbone_training",
        {"cross-encoder": "full", "late-interaction": "full", "llm": "lora", "dense": "full"}.get(
            kind
        ),
    )
    # Only a fully trained backbone is copied; otherwise the config points at its source.
    full = record["config"]["backbone_training"] == "full"
    assert (tmp_path / kind / BACKBONE_DIR).is_dir() == full


def test_resume_reproduces_the_uninterrupted_run(tiny_bert: Path, tmp_path: Path) -> None:
    examples = examples_from_beir(BEIR_TRAIN, hard_negatives=3, seed=0)
    cfg = config(
        "late-interaction",
        tiny_bert,
        tiny_bert,
        steps=6,
        checkpoint_every=2,
        negatives=2,
        lr=1e-3,
        head_lr=1e-2,
    )
    whole = RerankerTrainer(cfg, examples, tmp_path / "whole", progress=False)
    whole.fit()
    part = RerankerTrainer(cfg, examples, tmp_path / "part", progress=False)
    part.fit(stop_at=4)
    assert latest_checkpoint(tmp_path / "part") == tmp_path / "part" / CHECKPOINTS_DIR / (
        "step-0000004"
    )
    assert not (tmp_path / "part" / CONFIG_FILE).exists()
    resumed = RerankerTrainer(cfg, examples, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 4
    resumed.fit()
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-5)
    for (name, a), (_, b) in zip(
        whole.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(InvalidRequest, match="other settings"):
        RerankerTrainer(replace(cfg, lr=5e-4), examples, tmp_path / "part", resume=True)
    with pytest.raises(InvalidRequest, match="already holds"):
        RerankerTrainer(cfg, examples, tmp_path / "whole")


def test_micro_batches_accumulate_the_full_batch_gradient(tiny_bert: Path, tmp_path: Path) -> None:
    examples = planted_examples()
    grads = []
    for i, micro in enumerate((None, 1)):
        cfg = config("cross-encoder", tiny_bert, tiny_bert, micro_batch=micro, max_grad_norm=None)
        trainer = RerankerTrainer(cfg, examples, tmp_path / str(i), progress=False)
        trainer.model.eval()  # no dropout: the two passes must compute the same function
        trainer.compute_gradients(0)
        grads.append({n: p.grad.clone() for n, p in trainer._trainable if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["late-interaction", "knrm"])
def test_frozen_backbone_cache_gives_the_uncached_scores(
    kind: str, tiny_bert: Path, tmp_path: Path
) -> None:
    cfg = config(kind, tiny_bert, tiny_bert, backbone_training="frozen", head_lr=0.1)
    trainer = RerankerTrainer(cfg, planted_examples(), tmp_path / "m", progress=False)
    model: Any = trainer.model
    assert not model.encoder.training  # frozen: no dropout, outputs a function of the text
    queries, groups = trainer.batch(0)
    cached = model.group_scores(queries, groups)
    filled = model._pair_features if kind == "knrm" else model._cache
    assert len(filled) > 0
    torch.testing.assert_close(model.group_scores(queries, groups), cached)
    model.enable_cache(False)
    torch.testing.assert_close(cached, model.group_scores(queries, groups))
    trainable = [p for _, p in trainer._trainable]
    head = model.projection.weight if kind == "late-interaction" else model.dense.weight
    assert any(p is head for p in trainable) and len(trainable) <= 2
    trainer.model.enable_cache(True)  # type: ignore[operator]
    trainer.fit()  # training through the cache works and moves the head
    assert np.mean(trainer.losses[-5:]) < np.mean(trainer.losses[:5])


def test_groups_draw_negatives_and_never_a_relevant_document(
    tiny_bert: Path, tmp_path: Path
) -> None:
    examples = [
        TrainExample("q1", "a", ("b", "c")),
        TrainExample("q1", "b", ("c",)),  # b is relevant to q1: never q1's negative
        TrainExample("q2", "d", ()),
    ]
    cfg = config("knrm", tiny_bert, tiny_bert, batch_size=3, negatives=2)
    trainer = RerankerTrainer(cfg, examples, tmp_path / "m", progress=False)
    for step in range(5):
        queries, groups = trainer.batch(step)
        for q, g in zip(queries, groups, strict=True):
            assert len(g) == 3 and len(set(g)) == 3
            if q == "q1":
                assert not set(g[1:]) & {"a", "b"}
    assert trainer.batch(3) == RerankerTrainer(
        cfg, examples, tmp_path / "m2", progress=False
    ).batch(3)  # a function of (seed, step)


def test_losses() -> None:
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    expected = -torch.log_softmax(scores, dim=1)[:, 0].mean()
    torch.testing.assert_close(listwise_loss(scores), expected)
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(
        bce_loss(scores), torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)
    )
    with pytest.raises(InvalidRequest, match="Valid losses: listwise, bce"):
        rerank_loss("hinge", scores)


def test_bce_training_runs(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = config("knrm", tiny_bert, tiny_bert, loss="bce", steps=5, head_lr=0.1)
    result = RerankerTrainer(cfg, planted_examples(), tmp_path / "m", progress=False).fit()
    assert result.finished and result.losses[-1] < result.losses[0]


def test_settings_are_checked(tiny_bert: Path, tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="Valid kinds: cross-encoder, late-interaction"):
        RerankTrainConfig(kind="monot5")
    with pytest.raises(InvalidRequest, match="Valid options: max_length, dim"):
        RerankTrainConfig(kind="late-interaction", options={"dims": 3})
    with pytest.raises(InvalidRequest, match="at least one negative"):
        RerankTrainConfig(negatives=0)
    with pytest.raises(InvalidRequest, match="Valid modes: frozen, full, lora"):
        RerankTrainConfig(backbone_training="half")
    with pytest.raises(InvalidRequest, match="Nothing to train"):
        RerankerTrainer(
            config("llm", tiny_bert, tiny_llama, backbone_training="frozen"),
            planted_examples(),
            tmp_path / "m",
        )
    with pytest.raises(InvalidRequest, match="batch_size 5 exceeds"):
        RerankerTrainer(
            config("knrm", tiny_bert, tiny_llama, batch_size=5), planted_examples(), tmp_path / "m"
        )


def test_init_starts_from_a_trained_model(tiny_bert: Path, tmp_path: Path) -> None:
    first = config("knrm", tiny_bert, tiny_bert, steps=3, head_lr=0.1)
    RerankerTrainer(first, planted_examples(), tmp_path / "a", progress=False).fit()
    start = load_reranker(str(tmp_path / "a"), CPU).score("lava", POOL)
    follow = replace(first, init=str(tmp_path / "a"), backbone=None, steps=1, head_lr=1e-9)
    trainer = RerankerTrainer(follow, planted_examples(), tmp_path / "b", progress=False)
    np.testing.assert_allclose(
        trainer.model.head_state_dict()["dense.weight"].numpy(),
        load_reranker(str(tmp_path / "a"), CPU).model.head_state_dict()["dense.weight"].numpy(),  # type: ignore[attr-defined]
    )
    trainer.fit()
    np.testing.assert_allclose(
        load_reranker(str(tmp_path / "b"), CPU).score("lava", POOL), start, atol=1e-4
    )
    with pytest.raises(InvalidRequest, match="is a knrm reranker, not a cross-encoder"):
        RerankerTrainer(replace(follow, kind="cross-encoder"), planted_examples(), tmp_path / "c")
