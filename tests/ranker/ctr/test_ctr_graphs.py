"""The fast serving path: SDIM's table of item codes equals hashing on the fly, padded
fixed-shape scoring (what the CUDA graphs replay) equals unpadded scoring, read-only states
and their tensor cache. The CUDA graphs themselves run only on a GPU (marked ``gpu``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ranker.ctr import CTRModel, ItemCatalogue, make_config
from ranker.ctr.graphs import (
    CANDIDATE_BUCKETS,
    PaddedScorer,
    candidate_chunks,
    length_bucket,
    pad_rows,
)
from ranker.ctr.layers import simhash
from ranker.ctr.models import SDIM, State
from ranker.ctr.registry import build_module

N_ITEMS = 300
SMALL: dict[str, Any] = {
    "embed_dim": 8,
    "mlp": (16, 8),
    "din_hidden": (8,),
    "hashes": 6,
    "hash_bits": 2,
    "top_k": 5,
    "init_std": 0.5,
}


def serving(
    kind: str,
    seed: int = 0,
    *,
    device: str = "cpu",
    cuda_graphs: bool = True,
    state_cache: int = 32,
    **options: Any,
) -> CTRModel:
    cat = ItemCatalogue(
        [f"i{n}" for n in range(N_ITEMS)], np.arange(N_ITEMS) % 5, ["", "a", "b", "c", "d"]
    )
    config = make_config(kind, n_items=N_ITEMS, n_categories=5, options={**SMALL, **options})
    torch.manual_seed(seed)
    return CTRModel(
        build_module(config, cat.categories),
        cat,
        name=kind,
        version="test",
        device=device,
        cuda_graphs=cuda_graphs,
        state_cache=state_cache,
    )


# --- buckets and padding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (0, []),
        (1, [(0, 1, 64)]),
        (64, [(0, 64, 64)]),
        (65, [(0, 65, 128)]),
        (1000, [(0, 1000, 1024)]),
        (1024, [(0, 1024, 1024)]),
        (2500, [(0, 1024, 1024), (1024, 2048, 1024), (2048, 2500, 512)]),
    ],
)
def test_candidates_are_cut_into_padded_buckets(n: int, want: list[tuple[int, int, int]]) -> None:
    assert candidate_chunks(n) == want
    assert CANDIDATE_BUCKETS == (64, 128, 256, 512, 1024)


def test_bad_buckets_are_refused() -> None:
    for buckets in [(), (8, 4), (0, 4), (4, 4)]:
        with pytest.raises(ValueError, match="buckets"):
            candidate_chunks(3, buckets)
    with pytest.raises(ValueError, match="negative"):
        candidate_chunks(-1)


def test_length_buckets_are_powers_of_two_capped_by_the_most_a_state_holds() -> None:
    assert [length_bucket(n) for n in (0, 1, 64, 65, 1000)] == [64, 64, 64, 128, 1024]
    assert length_bucket(10_000, limit=10_000) == 10_000  # not 16384: no state is longer
    assert length_bucket(10, limit=50) == 50
    assert length_bucket(100, limit=50) == 128  # a state longer than the limit still fits
    assert pad_rows(np.array([3, 4]), 4).tolist() == [3, 4, -1, -1]
    with pytest.raises(ValueError, match="do not fit"):
        pad_rows(np.arange(5), 4)


# --- SDIM's item codes ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [3, 10])
def test_sdim_item_codes_equal_hashing_on_the_fly(bits: int) -> None:
    module = serving("sdim", hashes=48, hash_bits=bits, embed_dim=16).module
    assert isinstance(module, SDIM)
    rows = torch.arange(-1, N_ITEMS)
    with torch.no_grad():
        table = module.item_codes()
        want = simhash(module.embed(rows), module.planes)
    assert table.dtype == (torch.uint8 if bits <= 8 else torch.int32)
    assert table.shape == (N_ITEMS + 1, 48)
    assert torch.equal(table.long(), want)
    assert module.item_codes() is table  # built once


def test_sdim_item_codes_follow_new_weights() -> None:
    module = serving("sdim").module
    assert isinstance(module, SDIM)
    before = module.item_codes()
    other = serving("sdim", seed=1).module
    module.load_state_dict(other.state_dict())
    after = module.item_codes()
    assert after is not before
    with torch.no_grad():
        want = simhash(module.embed(torch.arange(-1, N_ITEMS)), module.planes)
    assert torch.equal(after.long(), want)


def _reference_sdim(module: SDIM, state: State, items: torch.Tensor) -> torch.Tensor:
    """SDIM's serving interest as first written: hash on the fly, gather, normalise."""
    m, buckets = module.config.hashes, module.buckets
    slots = simhash(module.embed(items), module.planes) + torch.arange(m) * buckets
    dim = state["bucket_sums"].shape[-1]
    gathered = state["bucket_sums"].reshape(-1, dim)[slots]
    return F.normalize(gathered, dim=-1).mean(dim=1)


def test_sdim_serving_interest_equals_the_reference_at_the_default_size() -> None:
    model = serving("sdim", embed_dim=16, hashes=48, hash_bits=3, init_std=0.05)
    assert isinstance(model.module, SDIM)
    history = np.random.default_rng(0).integers(0, N_ITEMS, 2_000)
    state = model.encode(history)
    items = torch.arange(-1, N_ITEMS)
    with torch.no_grad():
        tensors = model._to_torch(state)
        served = model.module.state_interest(tensors, items)
        want = _reference_sdim(model.module, tensors, items)
        # the bucket sums as hashing each behaviour on the fly would have made them
        e = model.module.embed(torch.from_numpy(history))
        slots = simhash(e, model.module.planes) + torch.arange(48) * 8
        sums = torch.zeros(48 * 8, e.shape[-1]).index_add(
            0, slots.reshape(-1), e.unsqueeze(1).expand(-1, 48, -1).reshape(-1, e.shape[-1])
        )
    assert served.abs().max() > 0.01
    torch.testing.assert_close(served, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tensors["bucket_sums"].reshape(-1, e.shape[-1]), sums)


# --- padded, fixed-shape scoring ---------------------------------------------------------------


def padded(model: CTRModel, buckets: tuple[int, ...] = (8, 16, 32)) -> PaddedScorer:
    """The CUDA-graph scorer of ``model`` without capture, on its (CPU) device."""
    keys = model.module.score_keys
    with torch.inference_mode():
        empty = model.module.empty_state()
    return PaddedScorer(
        model.module.score_state,
        {k: empty[k] for k in keys},
        growing=[k for k in keys if empty[k].shape[0] == 0],
        length_limit=model.config.max_history,
        capture=False,
        buckets=buckets,
    )


def padded_score(scorer: PaddedScorer, model: CTRModel, state: Any, rows: np.ndarray) -> Any:
    tensors = model._to_torch(state)
    with torch.inference_mode():
        return scorer({k: tensors[k] for k in model.module.score_keys}, rows)


@pytest.mark.parametrize("kind", ["sdim", "dare", "twin"])
def test_padded_scoring_equals_unpadded(kind: str) -> None:
    model = serving(kind, max_history=100)
    scorer = padded(model)
    rng = np.random.default_rng(3)
    # Longest first: shorter states reuse buffers that hold an earlier user's rows.
    for length in (100, 70, 64, 50, 3, 0):
        state = model.encode(rng.integers(0, N_ITEMS, length))
        for n in (1, 7, 8, 9, 32, 70, 0):
            rows = rng.integers(0, N_ITEMS, n)
            got = padded_score(scorer, model, state, rows)
            assert got.dtype == np.float32 and got.shape == (n,)
            np.testing.assert_allclose(got, model.score(state, rows), atol=1e-5, err_msg=f"{n}")
    if kind == "sdim":
        assert scorer.shapes == [(8, None), (16, None), (32, None)]
    else:  # candidate buckets x length buckets 64 and 100 (the cap)
        assert {s[1] for s in scorer.shapes} == {64, 100}


def test_padded_scoring_of_a_state_longer_than_the_limit() -> None:
    model = serving("dare", max_history=20)
    scorer = padded(model)
    wide = serving("dare", max_history=200)
    wide.module.load_state_dict(model.module.state_dict())
    state = wide.encode(np.random.default_rng(0).integers(0, N_ITEMS, 150))
    rows = np.arange(40)
    np.testing.assert_allclose(
        padded_score(scorer, model, state, rows), model.score(state, rows), atol=1e-5
    )
    assert (32, 256) in scorer.shapes


def test_padded_scorer_checks_its_arguments() -> None:
    model = serving("dare")
    with torch.inference_mode():
        empty = model.module.empty_state()
    with pytest.raises(ValueError, match="growing keys"):
        PaddedScorer(
            model.module.score_state, {"keys": empty["keys"]}, growing=["x"], capture=False
        )
    with pytest.raises(ValueError, match="CUDA device"):
        PaddedScorer(model.module.score_state, dict(empty), capture=True)


# --- read-only states and their cache ----------------------------------------------------------


def test_states_are_read_only_values() -> None:
    model = serving("sdim")
    state = model.encode(np.arange(10))
    for arr in state.values():
        assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        state["bucket_sums"][0, 0, 0] = 1.0
    newer = model.update(state, np.arange(10, 20))
    assert newer is not state and not newer["bucket_sums"].flags.writeable
    assert not model.empty_state()["bucket_sums"].flags.writeable


@pytest.mark.parametrize("kind", ["din", "sdim", "dare"])
def test_the_state_cache_keys_on_read_only_arrays(kind: str) -> None:
    model = serving(kind, state_cache=2)
    cands = np.arange(N_ITEMS)
    a = model.encode(np.arange(10))
    first = model.score(a, cands)
    assert len(model._cache) == 1
    cached = next(iter(model._cache.values()))[1]
    np.testing.assert_array_equal(model.score(a, cands), first)
    assert len(model._cache) == 1 and next(iter(model._cache.values()))[1] is cached
    # A writeable copy (as Redis returns) scores the same and is never cached.
    copy = {k: np.array(v) for k, v in a.items()}
    np.testing.assert_allclose(model.score(copy, cands), first, atol=1e-6)
    # So is a read-only view of writeable memory: it may change under the cache.
    views = {k: v.view() for k, v in copy.items()}
    for v in views.values():
        v.flags.writeable = False
    model.score(views, cands)
    assert len(model._cache) == 1
    # A changed state is a new value: a new entry; the oldest goes beyond the size.
    b = model.update(a, np.arange(20, 30))
    c = model.update(b, np.arange(30, 40))
    for state in (b, c):
        fresh = {k: np.array(v) for k, v in state.items()}
        np.testing.assert_allclose(model.score(state, cands), model.score(fresh, cands), atol=1e-6)
    assert len(model._cache) == 2
    held = [entry[0] for entry in model._cache.values()]
    assert all(any(x is y for y in c.values()) for x in held[-1])
    assert not any(any(x is y for y in a.values()) for h in held for x in h)
    # Cold starts use the model's one read-only empty state.
    model.score(None, cands)
    model.score(None, cands)
    held = [entry[0] for entry in model._cache.values()]
    assert len(held) == 2 and held[-1][0] is model._empty[model.module.score_keys[0]]


def test_no_cache_when_asked() -> None:
    model = serving("sdim", state_cache=0)
    state = model.encode(np.arange(10))
    model.score(state, np.arange(5))
    assert not model._cache


# --- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["sdim", "dare", "twin"])
def test_cuda_graphs_equal_eager_scoring(kind: str) -> None:
    graphed = serving(kind, device="cuda", max_history=500)
    eager = serving(kind, device="cuda", max_history=500, cuda_graphs=False, state_cache=0)
    eager.module.load_state_dict(graphed.module.state_dict())
    assert graphed.uses_cuda_graphs and not eager.uses_cuda_graphs
    rng = np.random.default_rng(0)
    for length in (500, 200, 3, 0):
        state = graphed.encode(rng.integers(0, N_ITEMS, length))
        fresh = {k: np.array(v) for k, v in state.items()}
        for n in (1, 64, 1000, 2100):
            rows = rng.integers(0, N_ITEMS, n)
            want = eager.score(fresh, rows)
            np.testing.assert_allclose(graphed.score(fresh, rows), want, atol=1e-5)
            np.testing.assert_allclose(graphed.score(state, rows), want, atol=1e-5)
    assert graphed.uses_cuda_graphs  # no capture failed
