"""Packed batches: packing arithmetic, planning, and embeddings equal to padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder.batching import plan_batches
from embedder.llm import PRESETS, LLMEmbedder, LLMEmbeddingModel, tiny_backbone
from embedder.llm.packing import PACKED_ATTENTION, pack_rows, unpack, varlen_available

TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "protein folding and gene expression in the cell",
    "",
    "the patient received a dose during the clinical trial",
    "cat",
]


def test_pack_rows_lays_texts_end_to_end() -> None:
    flat = np.arange(100, 110)
    # rows: flat[2:5], flat[7:8], flat[0:2]
    batch = pack_rows(flat, np.array([2, 7, 0]), np.array([3, 1, 2]))
    assert batch.input_ids.tolist() == [[102, 103, 104, 107, 100, 101]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == np.int32
    assert batch.mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    hidden = torch.tensor(batch.input_ids, dtype=torch.float32)[..., None]  # (1, T, 1)
    padded = unpack(hidden, torch.from_numpy(batch.gather))[..., 0]
    assert padded[torch.from_numpy(batch.mask)].tolist() == [102, 103, 104, 107, 100, 101]


def test_packed_plans_bound_real_tokens() -> None:
    lengths = np.array([5, 300, 40, 40, 7, 1000, 3, 60])
    batches = plan_batches(lengths, batch_tokens=100, max_batch_size=3, packed=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert lengths[batch].sum() <= 100 or len(batch) == 1  # a long text goes alone
    # Packing fits more than padding would: 60 + 40 (padded: 2 x 60 > 100).
    assert [lengths[b].tolist() for b in batches][2] == [60, 40]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_packed_embeddings_equal_padded_ones(family: str, preset: str) -> None:
    model = LLMEmbeddingModel.from_preset(tiny_backbone(family), preset)
    padded = LLMEmbedder(model, device="cpu", packed=False, min_fill=0.0)
    packed = LLMEmbedder(model, device="cpu", packed=True)
    assert packed.packed and not padded.packed
    expected = padded.embed(TEXTS)
    np.testing.assert_allclose(packed.embed(TEXTS), expected, atol=2e-5)
    np.testing.assert_allclose(packed.embed(TEXTS[1:2]), expected[1:2], atol=2e-5)
    packed.batch_tokens = 8  # several packed batches, one text longer than the budget
    np.testing.assert_allclose(packed.embed(TEXTS), expected, atol=2e-5)
    # The backbone's own attention implementation is back after each packed forward.
    assert model.backbone.config._attn_implementation == "sdpa" != PACKED_ATTENTION


def test_packing_defaults_and_refusals() -> None:
    decoder = LLMEmbeddingModel.from_preset(tiny_backbone("llama"), "design1")
    assert LLMEmbedder(decoder, device="cpu").packed is varlen_available("cpu") is False
    encoder = LLMEmbeddingModel.from_backbone(
        tiny_backbone("bert", attention="bidirectional"), "mean"
    )
    assert LLMEmbedder(encoder, device="cpu").packed is False
    with pytest.raises(ValueError, match="decoder"):
        LLMEmbedder(encoder, device="cpu", packed=True)


@pytest.mark.slow
def test_compiled_packed_engine_matches_eager() -> None:
    model = LLMEmbeddingModel.from_preset(tiny_backbone("llama", num_layers=3), "design5")
    expected = LLMEmbedder(model, device="cpu", packed=False, min_fill=0.0).embed(TEXTS)
    compiled = LLMEmbedder(model, device="cpu", packed=True, compile=True)
    np.testing.assert_allclose(compiled.embed(TEXTS), expected, atol=1e-4)
