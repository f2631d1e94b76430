"""Pooling heads on synthetic hidden states: registry, masking, MLTP structure, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import InvalidRequest
from embedder.llm.pooling import (
    POOLING_HEADS,
    MultiLayerTrainablePooling,
    PoolingHead,
    build_pooling,
    first_token_index,
    last_token_index,
    masked_mean,
    pooling_modes,
)

D, L = 16, 3
CONFIGS: list[dict[str, Any]] = [
    {"mode": "mean"},
    {"mode": "cls"},
    {"mode": "eos"},
    {"mode": "trainable", "source": "tokens"},
    {"mode": "trainable", "source": "eos", "num_latents": 2},
    {"mode": "mltp", "source": "mean", "num_latents": 3, "num_heads": 2, "head_dim": 5},
    {"mode": "mltp", "source": "eos"},
    {"mode": "latent", "num_latents": 6},
]
IDS = [c["mode"] + "-" + str(c.get("source", "")) for c in CONFIGS]


def _states(mask: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*mask.shape, D, generator=g) for _ in range(L + 1))


def _head(config: dict[str, Any]) -> PoolingHead:
    return build_pooling(config, hidden_size=D, num_layers=L, seed=0).eval()


def test_registry_lists_modes() -> None:
    assert pooling_modes() == ["cls", "eos", "latent", "mean", "mltp", "trainable"]
    assert set(POOLING_HEADS) == set(pooling_modes())


def test_invalid_mode_lists_valid_modes() -> None:
    with pytest.raises(InvalidRequest) as info:
        build_pooling("x", hidden_size=D, num_layers=L)
    assert info.value.message == (
        "Invalid pooling mode 'x'. Valid modes: cls, eos, latent, mean, mltp, trainable"
    )


def test_invalid_option_and_source_are_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"Invalid option\(s\) num_latents .* 'mean'"):
        build_pooling({"mode": "mean", "num_latents": 4}, hidden_size=D, num_layers=L)
    with pytest.raises(InvalidRequest, match=r"Valid sources: mean, eos"):
        build_pooling({"mode": "mltp", "source": "tokens"}, hidden_size=D, num_layers=L)
    with pytest.raises(ValueError, match="num_latents must be >= 1"):
        build_pooling({"mode": "trainable", "num_latents": 0}, hidden_size=D, num_layers=L)


def test_token_indices_respect_padding_side() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = right.flip(1)
    assert first_token_index(right).tolist() == [0, 0, 0]
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert first_token_index(left).tolist() == [2, 0, 4]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_masked_mean_ignores_padding_even_if_not_finite() -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    hidden[0, 3] = float("nan")
    mask = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), hidden[0, :3].mean(0, keepdim=True))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_padding_content_and_amount_do_not_matter(config: dict[str, Any]) -> None:
    head = _head(config)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    states = _states(mask)
    # The same real tokens with other garbage in the padding, and with no padding at all.
    noisy = tuple(torch.where(mask.bool()[..., None], h, torch.randn_like(h) * 1e3) for h in states)
    with torch.inference_mode():
        out = head(states, mask)
        assert out.shape == (2, D) and out.dtype == torch.float32
        torch.testing.assert_close(head(noisy, mask), out)
        for row, keep in ((0, slice(0, 4)), (1, slice(2, 6))):
            alone = tuple(h[row : row + 1, keep] for h in states)
            ones = torch.ones(1, 4, dtype=torch.long)
            torch.testing.assert_close(head(alone, ones), out[row : row + 1], atol=1e-5, rtol=0)


def test_single_layer_heads_need_only_the_last_layer() -> None:
    mask = torch.ones(2, 5, dtype=torch.long)
    states = _states(mask)
    for config in CONFIGS:
        head = _head(config)
        if head.needs_all_layers:
            with pytest.raises(ValueError, match="needs all 4 hidden states"):
                head(states[-1:], mask)
        else:
            torch.testing.assert_close(head(states[-1:], mask), head(states, mask))


def test_mltp_structure() -> None:
    head = _head({"mode": "mltp", "num_latents": 3, "num_heads": 2, "head_dim": 5})
    assert isinstance(head, MultiLayerTrainablePooling) and head.needs_all_layers
    assert head.layer_embedding.shape == (L, D)
    assert head.pooler.latents.shape == (3, D)
    assert head.pooler.attn.to_q.out_features == 2 * 5
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    states = _states(mask)
    with torch.inference_mode():
        out = head(states, mask)
        # The embedding output (hidden_states[0]) is not one of the pooled layers.
        changed = (torch.randn_like(states[0]), *states[1:])
        torch.testing.assert_close(head(changed, mask), out)
        # Layer means are order-free: permuting real tokens changes nothing ...
        perm = torch.tensor([2, 0, 1, 3])
        torch.testing.assert_close(head(tuple(h[:, perm] for h in states), mask), out)
        # ... while every layer 1..L matters (a random change: the pre-norm LayerNorm makes a
        # constant shift of a layer vector invisible).
        for layer in range(1, L + 1):
            other = list(states)
            other[layer] = other[layer] + torch.randn_like(other[layer])
            assert not torch.allclose(head(tuple(other), mask), out)


def test_eos_sources_read_only_the_last_real_token() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    states = _states(mask)
    earlier = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]]).bool()[..., None]
    changed = tuple(torch.where(earlier, torch.randn_like(h), h) for h in states)
    for config in ({"mode": "eos"}, {"mode": "trainable", "source": "eos"}, CONFIGS[6]):
        head = _head(config)
        torch.testing.assert_close(head(changed, mask), head(states, mask))


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = _head(CONFIGS[5])
    b = _head(CONFIGS[5])
    assert torch.rand(1) == expected
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_save_load_round_trip(config: dict[str, Any], tmp_path: Path) -> None:
    head = _head(config)
    head.save(tmp_path)
    loaded = PoolingHead.load(tmp_path).eval()
    assert type(loaded) is type(head)
    assert loaded.get_config() == head.get_config()
    assert (tmp_path / "model.safetensors").is_file() == any(True for _ in head.parameters())
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    states = _states(mask)
    with torch.inference_mode():
        assert torch.equal(loaded(states, mask), head(states, mask))


def test_load_checks_the_class(tmp_path: Path) -> None:
    _head({"mode": "mean"}).save(tmp_path)
    with pytest.raises(ValueError, match="holds a 'mean' head, not 'mltp'"):
        MultiLayerTrainablePooling.load(tmp_path)
