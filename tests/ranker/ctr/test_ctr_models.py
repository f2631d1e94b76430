"""The CTR models: forward passes, the BSE serving path equal to the training path (1e-5),
incremental updates equal to full encodes, DIN's chunked scoring, the registry's errors."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest
from ranker.ctr import MODELS, CTRModel, CTRServingModel, ItemCatalogue, make_config, model_spec
from ranker.ctr.registry import build_module

KINDS = ["din", "din-short", "sdim", "dare", "twin"]
N_ITEMS = 60
SMALL: dict[str, Any] = {
    "embed_dim": 8,
    "mlp": (16, 8),
    "din_hidden": (8,),
    "hashes": 6,
    "hash_bits": 2,
    "top_k": 5,
    "init_std": 0.5,  # wide embeddings: varied attention, few near-tied top-k scores
}


def catalogue() -> ItemCatalogue:
    items = [f"i{n}" for n in range(N_ITEMS)]
    return ItemCatalogue(items, np.arange(N_ITEMS) % 5, ["", "a", "b", "c", "d"])


def serving(kind: str, seed: int = 0, **options: Any) -> CTRModel:
    cat = catalogue()
    config = make_config(kind, n_items=N_ITEMS, n_categories=5, options={**SMALL, **options})
    torch.manual_seed(seed)
    return CTRModel(build_module(config, cat.categories), cat, name=kind, version="test")


def training_probs(model: CTRModel, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The training path on a padded batch: every candidate with ``history`` (+ padding)."""
    keep = history[-model.config.max_history :]
    width = len(keep) + 3  # padding the mask must hide
    hist = torch.full((len(candidates), width), -1, dtype=torch.long)
    hist[:, : len(keep)] = torch.from_numpy(keep)
    mask = hist >= 0
    with torch.no_grad():
        logits = model.module(torch.from_numpy(candidates), hist, mask)
    return torch.sigmoid(logits).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_forward_gives_one_logit_per_sample_and_gradients(kind: str) -> None:
    model = serving(kind)
    module = model.module.train()
    items = torch.tensor([0, 5, 9, 59])
    hist = torch.tensor([[1, 2, 3, -1], [4, -1, -1, -1], [-1, -1, -1, -1], [7, 8, 9, 10]])
    logits = module(items, hist, hist >= 0)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert isinstance(model, CTRServingModel)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [1, 7, 40])
def test_bse_scores_equal_the_training_path(kind: str, length: int) -> None:
    model = serving(kind, seed=length)
    rng = np.random.default_rng(length)
    history = rng.integers(0, N_ITEMS, length)
    candidates = np.arange(N_ITEMS)
    state = model.encode(history)
    assert int(state["n_events"]) == length
    bse = model.score(state, candidates)
    assert bse.dtype == np.float32 and bse.shape == (N_ITEMS,)
    np.testing.assert_allclose(bse, training_probs(model, history, candidates), atol=1e-5)
    # The interest vectors themselves (O(1) values), not only the squashed probabilities.
    hist = torch.from_numpy(history[-model.config.max_history :]).expand(N_ITEMS, -1)
    items = torch.from_numpy(candidates)
    with torch.no_grad():
        trained = model.module.interest(items, hist, torch.ones_like(hist, dtype=torch.bool))
        served = model.module.state_interest(model._to_torch(state), items)
    assert trained.abs().max() > 0.1
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=1e-5)


def test_din_short_keeps_fifty_behaviours_and_din_unnormalised_attention_matches() -> None:
    short = serving("din-short")
    assert short.config.max_history == 50
    history = np.random.default_rng(1).integers(0, N_ITEMS, 120)
    state = short.encode(history)
    assert state["embeddings"].shape[0] == 50 and int(state["n_events"]) == 120
    np.testing.assert_allclose(
        short.score(state, np.arange(10)),
        training_probs(short, history, np.arange(10)),
        atol=1e-5,
    )
    raw = serving("din", din_softmax=False)
    np.testing.assert_allclose(
        raw.score(raw.encode(history[:30]), np.arange(10)),
        training_probs(raw, history[:30], np.arange(10)),
        atol=1e-5,
    )


def test_dare_attention_may_be_narrower_than_representation() -> None:
    model = serving("dare", attention_dim=4)
    state = model.encode(np.arange(30))
    assert state["keys"].shape == (30, 8) and state["values"].shape == (30, 16)
    np.testing.assert_allclose(
        model.score(state, np.arange(20)),
        training_probs(model, np.arange(30), np.arange(20)),
        atol=1e-5,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_updates_equal_a_full_encode(kind: str) -> None:
    model = serving(kind, max_history=16)
    history = np.random.default_rng(2).integers(0, N_ITEMS, 45)
    state = model.encode(history[:5])
    for part in (history[5:6], history[6:30], np.array([], dtype=np.int64), history[30:]):
        state = model.update(state, part)
    full = model.encode(history)
    assert state.keys() == full.keys()
    for key in full:
        np.testing.assert_allclose(state[key], full[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(
        model.score(state, np.arange(N_ITEMS)), model.score(full, np.arange(N_ITEMS)), atol=1e-6
    )


def test_sdim_state_size_does_not_grow_with_the_history() -> None:
    model = serving("sdim")
    short = model.encode(np.arange(3))
    long = model.encode(np.random.default_rng(0).integers(0, N_ITEMS, 5_000))
    for key in ("bucket_sums", "bucket_counts"):
        assert short[key].shape == long[key].shape == (6, 4, *short[key].shape[2:])
    assert long["bucket_counts"].sum() == 5_000 * 6  # every behaviour in one bucket per hash


def test_dare_state_is_bounded_by_max_history() -> None:
    model = serving("dare", max_history=100)
    state = model.encode(np.random.default_rng(0).integers(0, N_ITEMS, 1_000))
    assert state["keys"].shape[0] == 100 and int(state["n_events"]) == 1_000


def test_din_scores_a_thousand_candidates_against_ten_thousand_behaviours_in_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ranker.ctr.models as models

    model = serving("din", max_history=10_000)
    history = np.random.default_rng(0).integers(0, N_ITEMS, 10_000)
    state = model.encode(history)
    candidates = np.random.default_rng(1).integers(0, N_ITEMS, 1_000)
    monkeypatch.setattr(models, "DIN_CHUNK_FLOATS", 1 << 22)  # 16 MiB chunks: many of them
    chunked = model.score(state, candidates)
    assert chunked.shape == (1_000,)
    monkeypatch.setattr(models, "DIN_CHUNK_FLOATS", 1 << 30)
    np.testing.assert_allclose(chunked[:40], model.score(state, candidates[:40]), atol=1e-6)


def test_cold_start_and_unknown_items_score() -> None:
    model = serving("sdim")
    cold = model.score(None, np.array([0, 1, -1]))
    assert cold.shape == (3,) and np.all((cold > 0) & (cold < 1))
    state = model.encode(np.array([3, -1, 4]))  # the unknown behaviour is skipped
    assert int(state["n_events"]) == 2
    np.testing.assert_allclose(
        model.score(state, np.arange(5)), model.score(model.encode(np.array([3, 4])), np.arange(5))
    )


def test_states_of_another_model_are_refused() -> None:
    sdim, dare = serving("sdim"), serving("dare")
    with pytest.raises(InvalidRequest, match="not a sdim state"):
        sdim.score(dare.encode(np.arange(3)), np.arange(3))
    other = serving("sdim", hashes=3)
    with pytest.raises(InvalidRequest, match="re-encode"):
        sdim.score(other.encode(np.arange(3)), np.arange(3))
    with pytest.raises(InvalidRequest, match="catalogue rows"):
        sdim.score(None, np.array([N_ITEMS]))
    with pytest.raises(InvalidRequest, match="1-D"):
        sdim.encode(np.array([[1, 2]]))


def test_the_registry_lists_every_kind_and_names_them_in_errors() -> None:
    assert list(MODELS) == KINDS
    with pytest.raises(
        InvalidRequest,
        match=r"^Unknown model 'x'\. Valid models: din, din-short, sdim, dare, twin$",
    ):
        model_spec("x")
    with pytest.raises(InvalidRequest, match=r"Unknown model option.*'heads'.*Valid options"):
        make_config("sdim", n_items=3, n_categories=1, options={"heads": 2})
    with pytest.raises(InvalidRequest, match="hash_bits"):
        make_config("sdim", n_items=3, n_categories=1, options={"hash_bits": 40})
    with pytest.raises(InvalidRequest, match="use dare"):
        build_module(make_config("twin", n_items=3, n_categories=1, options={"attention_dim": 2}))
    config = make_config("din-short", n_items=3, n_categories=1, options={"mlp": "32,16"})
    assert config.max_history == 50 and config.mlp == (32, 16)


def test_twin_has_one_table_and_dare_two() -> None:
    twin, dare = serving("twin").module, serving("dare").module
    assert not any("attention_embedding" in k for k in twin.state_dict())
    assert any("attention_embedding" in k for k in dare.state_dict())


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, ranker.ctr; ranker.ctr.model_spec('sdim'); ranker.ctr.SampleOptions; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
