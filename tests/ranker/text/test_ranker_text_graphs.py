"""Bucketed classifier logits: padding to a bucket changes no logit.

The buffers and the padding run here eagerly (``capture=False``); on CUDA the same buffers
are captured as graphs. A GPU test below checks the captured path against the eager one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedder.lean_bert import classifier_logits
from ranker.text import LoadOptions
from ranker.text.graphs import LENGTH_STEP, MAX_ROWS, ROW_STEP, GraphedLogits, bucket
from ranker.text.loaders import serve
from tests.ranker.text.conftest import make_tiny_bert


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import BertForSequenceClassification

    path = make_tiny_bert(tmp_path_factory.mktemp("graphs") / "clf", seed=3, num_labels=2)
    return BertForSequenceClassification.from_pretrained(Path(path)).eval()


def _batch(vocab: int, lengths: list[int], seed: int) -> tuple[np.ndarray, ...]:
    """Host arrays ``(ids, mask, types)`` of a padded batch (what GraphedLogits takes)."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    mask = np.arange(width)[None, :] < np.array(lengths)[:, None]
    ids = rng.integers(1, vocab, (len(lengths), width)) * mask
    types = ((np.arange(width)[None, :] >= 3) & mask).astype(np.int64)
    return ids, mask.astype(np.int64), types


def _reference(classifier: Any, ids: Any, mask: Any, types: Any) -> torch.Tensor:
    """The unpadded logits, eagerly."""
    t = None if types is None else torch.from_numpy(types)
    return classifier_logits(classifier, torch.from_numpy(ids), torch.from_numpy(mask), t)


def _eager(classifier: Any) -> GraphedLogits:
    """The bucketed path over ``classifier``, run without capture."""
    return GraphedLogits(
        lambda i, m, ty: classifier_logits(classifier, i, m, ty),
        pad_id=0,
        max_length=128,
        device="cpu",
        capture=False,
    )


def test_bucket_rounds_up_to_the_step() -> None:
    assert [bucket(n, 16) for n in (1, 16, 17, 100, 128)] == [16, 16, 32, 112, 128]


@pytest.mark.parametrize(
    "lengths",
    [[5], [40, 3, 17], [33] * 20, list(range(1, 101)), [64, 64]],
    ids=["one", "mixed", "uniform-20", "ragged-100", "exact-bucket"],
)
@pytest.mark.parametrize("with_types", [True, False])
def test_padded_logits_equal_unpadded(
    classifier: Any, lengths: list[int], with_types: bool
) -> None:
    ids, mask, types = _batch(classifier.config.vocab_size, lengths, seed=len(lengths))
    t = types if with_types else None
    graphed = _eager(classifier)
    with torch.inference_mode():
        ref = _reference(classifier, ids, mask, t)
        got = graphed(ids, mask, t)
        again = graphed(ids, mask, t)  # the bucket's buffers reused
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, got, atol=0, rtol=0)
    rows, width = ids.shape
    assert graphed.captured() == [(bucket(rows, ROW_STEP), bucket(width, LENGTH_STEP))]


def test_buckets_are_reused_and_a_smaller_batch_is_not_polluted(classifier: Any) -> None:
    """A big batch then a small one in the same bucket: the small one's padding is reset."""
    graphed = _eager(classifier)
    big = _batch(classifier.config.vocab_size, [30] * 16, seed=1)
    small = _batch(classifier.config.vocab_size, [7, 12], seed=2)
    with torch.inference_mode():
        graphed(*big)
        got = graphed(*small)
        ref = _reference(classifier, *small)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert graphed.captured() == [(16, 32)]


def test_shapes_outside_the_buckets_are_refused(classifier: Any) -> None:
    graphed = GraphedLogits(lambda *a: a[0], pad_id=0, max_length=64, device="cpu", capture=False)
    assert graphed.fits(MAX_ROWS, 64)
    assert not graphed.fits(MAX_ROWS + 1, 10)
    assert not graphed.fits(4, 65)
    with pytest.raises(ValueError, match="fits no bucket"):
        graphed(np.zeros((4, 65), dtype=np.int64), np.ones((4, 65)), None)


def test_warm_makes_every_bucket_up_to_the_limits_once(classifier: Any) -> None:
    graphed = GraphedLogits(
        lambda i, m, t: classifier_logits(classifier, i, m, t),
        pad_id=0,
        max_length=80,
        device="cpu",
        capture=False,
    )
    assert graphed.warm(33, 100, with_types=True) == 2 * 2  # rows 16, 32 x tokens 32, 64
    assert graphed.captured() == [(16, 32), (16, 64), (32, 32), (32, 64)]
    assert graphed.warm(33, 100, with_types=True) == 0  # already there
    assert graphed.warm(16, 32, with_types=False) == 1  # without segment ids: its own bucket


def test_the_cross_encoder_stays_eager_off_cuda(tmp_path: Path) -> None:
    from ranker.text.model import create_model

    model: Any = create_model("cross-encoder", str(make_tiny_bert(tmp_path / "b")))
    model.eval()
    prepared = model.prepare("a query", ["one document", "another longer document here"])
    with torch.inference_mode():
        scores = model.score_prepared(prepared, np.arange(2))
    assert scores.shape == (2,) and model._graphs is None
    assert model.warm() == 0  # nothing to capture on the CPU
    assert serve(model, "cpu", LoadOptions(device="cpu")).warm() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_scores_equal_eager_on_cuda(tmp_path: Path) -> None:
    from ranker.text.model import create_model

    model: Any = create_model("cross-encoder", str(make_tiny_bert(tmp_path / "b")))
    model.eval().to("cuda")
    docs = [f"document {i} " + "word " * (i % 23) for i in range(100)]
    prepared = model.prepare("a query", docs)
    rows = np.arange(len(docs))
    with torch.inference_mode():
        graphed = model.score_prepared(prepared, rows)
        model.cuda_graphs = False
        eager = model.score_prepared(prepared, rows)
    assert model._graphs is not None and model._graphs[1].captured()
    torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=0)
    model.cuda_graphs = True
    assert model.warm(rows=32, length=64) > 0  # buckets this call had not made yet
    assert {(16, 32), (32, 64)} <= set(model._graphs[1].captured())
