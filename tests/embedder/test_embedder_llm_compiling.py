"""Regional compilation: which modules are blocks, in-place compilation, shared compiled code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from embedder.llm import LLMEmbedder, LLMEmbeddingModel, tiny_backbone
from embedder.llm.compiling import block_class_names, compile_blocks, find_blocks

TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "protein folding and gene expression in the cell",
    "the patient received a dose",
]


@pytest.mark.parametrize(
    ("family", "block"),
    [("llama", "LlamaDecoderLayer"), ("qwen2", "Qwen2DecoderLayer"), ("bert", "BertLayer")],
)
def test_finds_one_block_per_layer(family: str, block: str) -> None:
    model = tiny_backbone(family, num_layers=3, attention="bidirectional").model
    assert block in block_class_names(model)
    blocks = [m for _, m in find_blocks(model) if type(m).__name__ == block]
    assert len(blocks) == 3


def test_blocks_inside_blocks_are_not_compiled_twice() -> None:
    class Inner(nn.Linear):
        pass

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner(2, 2)

    class Model(nn.Module):
        _no_split_modules = ["Outer", "Inner"]

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Outer(), Outer()])
            self.head = Inner(2, 2)

    names = [name for name, _ in find_blocks(Model())]
    assert names == ["layers.0", "layers.1", "head"]


def test_compile_blocks_in_place_keeps_weights_names_and_block_hooks() -> None:
    model = tiny_backbone("llama", num_layers=2).model
    keys = list(model.state_dict())
    assert compile_blocks(model) == 2
    assert all("forward" in vars(layer) for layer in model.layers)  # compiled per instance
    assert "forward" not in vars(model)  # the model itself stays eager
    assert list(model.state_dict()) == keys  # saving and loading are unaffected
    # transformers' hidden-state hooks on the blocks stay; none is left inside a block.
    assert all(layer._forward_hooks for layer in model.layers)
    inner = [m for layer in model.layers for m in layer.modules() if m is not layer]
    assert not any(m._forward_hooks for m in inner)


def test_compiling_twice_does_not_wrap_twice() -> None:
    model = tiny_backbone("llama", num_layers=2).model
    assert compile_blocks(model) == 2
    forwards = [layer.forward for layer in model.layers]
    assert compile_blocks(model) == 2  # a second embedder over the same model
    assert [layer.forward for layer in model.layers] == forwards


def test_model_without_blocks_is_left_alone() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    assert compile_blocks(model) == 0
    assert "forward" not in vars(model[0])


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_compile_nothing_at_request_time() -> None:
    from torch._dynamo.utils import counters

    model = LLMEmbeddingModel.from_preset(tiny_backbone("llama", num_layers=4), "design5")
    eager = LLMEmbedder(model, device="cpu", min_fill=0.0)
    expected = eager.embed(TEXTS)
    torch._dynamo.reset()
    counters.clear()
    compiled = LLMEmbedder(model, device="cpu", compile=True, min_fill=0.0)
    # Four blocks share their compiled code: one graph for padded batches, one for unpadded
    # ones, one for a single text; and no graph breaks inside a block.
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 3
    assert not counters["graph_break"]
    np.testing.assert_allclose(compiled.embed(TEXTS), expected, atol=1e-4)
    np.testing.assert_allclose(compiled.embed(TEXTS[1:2]), expected[1:2], atol=1e-4)
    np.testing.assert_allclose(
        compiled.embed(TEXTS[:3] * 3), np.vstack([expected[:3]] * 3), atol=1e-4
    )
    assert counters["stats"]["unique_graphs"] == graphs  # the warm-up compiled everything
