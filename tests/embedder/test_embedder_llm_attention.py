"""Attention modes of LLM backbones and padding invariance of every pooling head.

Tiny random-config decoders (Llama, Qwen2, and Qwen3 / Mistral for breadth) under SDPA and
eager attention; no downloads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest, ModelNotAvailable
from embedder.batching import flatten_ids, pad_rows
from embedder.llm.backbone import (
    Backbone,
    check_attention_mode,
    set_attention_mode,
    tiny_backbone,
)
from embedder.llm.model import LLMEmbeddingModel

FAMILIES = ("llama", "qwen2")
TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "protein folding and gene expression in the cell the patient received a dose",
    "neural networks learn sentence embeddings for retrieval",
    "park",
]
#: Every head and source: (name, pooling config).
POOLINGS: list[tuple[str, dict[str, Any]]] = [
    ("mean", {"mode": "mean"}),
    ("cls", {"mode": "cls"}),
    ("eos", {"mode": "eos"}),
    ("trainable-tokens", {"mode": "trainable", "source": "tokens"}),
    ("trainable-eos", {"mode": "trainable", "source": "eos"}),
    ("mltp-mean", {"mode": "mltp", "source": "mean"}),
    ("mltp-eos", {"mode": "mltp", "source": "eos"}),
    ("latent", {"mode": "latent", "num_latents": 8}),
]


def _first_token_states(backbone: Backbone, last_ids: tuple[int, int], pad: int) -> torch.Tensor:
    """First-token last-layer states of two texts that differ only in their last token.

    With ``pad > 0`` a longer third row forces a padded (materialised) mask.
    """
    rows = [[2, 5, 6, 7, last_ids[0]], [2, 5, 6, 7, last_ids[1]]]
    if pad:
        rows.append([2, 5, 6, 7, 8, *([9] * pad)])
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        out = backbone.model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.last_hidden_state[:2, 0]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", [*FAMILIES, "qwen3", "mistral"])
@pytest.mark.parametrize("pad", [0, 3], ids=["unpadded", "padded"])
def test_last_token_reaches_first_token_only_when_bidirectional(
    family: str, impl: str, pad: int
) -> None:
    causal = tiny_backbone(family, attention="causal", attn_implementation=impl)
    bidir = tiny_backbone(family, attention="bidirectional", attn_implementation=impl)
    assert causal.model.config._attn_implementation == impl

    first = _first_token_states(causal, (10, 11), pad)
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=1e-6)

    first = _first_token_states(bidir, (10, 11), pad)
    assert (first[0] - first[1]).abs().max() > 1e-3


def test_attention_mode_switches_back_and_forth() -> None:
    backbone = tiny_backbone("llama", attention="bidirectional")
    set_attention_mode(backbone.model, "causal", is_decoder=True)
    check_attention_mode(backbone.model, "causal")
    set_attention_mode(backbone.model, "bidirectional", is_decoder=True)
    check_attention_mode(backbone.model, "bidirectional")


def test_probe_catches_a_mode_that_did_not_take_effect() -> None:
    # What a port that patched a no-longer-called private method would see: still causal.
    backbone = tiny_backbone("qwen2", attention="causal")
    with pytest.raises(ModelNotAvailable, match="did not take effect"):
        check_attention_mode(backbone.model, "bidirectional")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_probe_is_not_fooled_by_massive_activations(attention: str, dtype: torch.dtype) -> None:
    # Two near-constant hidden dimensions far larger than the rest, as in real LLMs: the probe
    # must still see (or not see) the bidirectional change in the others, also in bf16.
    backbone = tiny_backbone("llama", attention=attention)  # type: ignore[arg-type]
    model = backbone.model.to(dtype)
    offset = torch.zeros(model.config.hidden_size, dtype=dtype)
    offset[:2] = 1e3
    model.norm.register_forward_hook(lambda _m, _i, out: out + offset)
    check_attention_mode(model, attention)  # type: ignore[arg-type]
    other = "causal" if attention == "bidirectional" else "bidirectional"
    with pytest.raises(ModelNotAvailable, match="did not take effect"):
        check_attention_mode(model, other)  # type: ignore[arg-type]


def test_invalid_attention_mode_lists_valid_ones() -> None:
    with pytest.raises(InvalidRequest, match=r"Valid modes: causal, bidirectional"):
        tiny_backbone("llama", attention="sideways")  # type: ignore[arg-type]


def test_encoder_is_bidirectional_and_refuses_causal() -> None:
    backbone = tiny_backbone("bert", attention="bidirectional")
    assert not backbone.is_decoder
    with pytest.raises(InvalidRequest, match="needs a decoder"):
        tiny_backbone("bert", attention="causal")


def _embed_alone_and_padded(model: LLMEmbeddingModel, side: str) -> tuple[np.ndarray, np.ndarray]:
    tok = model.tokenizer
    rows = tok(TEXTS, add_special_tokens=True)["input_ids"]
    flat, lengths = flatten_ids(rows, append_id=tok.eos_token_id)
    starts = np.cumsum(lengths) - lengths
    assert lengths.min() < lengths.max()  # the batch really is padded

    def run(idx: np.ndarray) -> np.ndarray:
        ids, mask = pad_rows(
            flat,
            starts[idx],
            lengths[idx],
            pad_id=tok.pad_token_id,
            side=side,  # type: ignore[arg-type]
        )
        with torch.inference_mode():
            return model(torch.from_numpy(ids), torch.from_numpy(mask).long()).numpy()

    batch = run(np.arange(len(TEXTS)))
    alone = np.concatenate([run(np.array([i])) for i in range(len(TEXTS))])
    return batch, alone


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", [cfg for _, cfg in POOLINGS], ids=[n for n, _ in POOLINGS])
def test_text_alone_equals_text_in_padded_batch(
    family: str, attention: str, side: str, pooling: dict[str, Any]
) -> None:
    backbone = tiny_backbone(family, attention=attention)  # type: ignore[arg-type]
    model = LLMEmbeddingModel.from_backbone(backbone, pooling).eval()
    batch, alone = _embed_alone_and_padded(model, side)
    assert np.isfinite(batch).all()
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", [*FAMILIES, "qwen3", "mistral"])
def test_no_mask_keeps_the_attention_mode(family: str) -> None:
    """Unpadded batches reach the backbone without a mask (so SDPA may use flash kernels)."""
    ids = torch.tensor([[2, 5, 6, 7, 10], [2, 5, 6, 7, 11]])
    for attention in ("causal", "bidirectional"):
        backbone = tiny_backbone(family, attention=attention)
        with torch.inference_mode():
            first = backbone.model(input_ids=ids, use_cache=False).last_hidden_state[:, 0]
        changed = bool((first[0] - first[1]).abs().max() > 1e-3)
        assert changed == (attention == "bidirectional"), attention
