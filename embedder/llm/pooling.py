"""Pooling heads: hidden states of a backbone → one vector per text.

A typed registry maps a mode name to its :class:`PoolingHead` class (sentence-transformers
style). Every head takes

- ``hidden_states``: a sequence of ``(batch, tokens, d)`` tensors; the last one is the last
  layer's output. Heads with ``needs_all_layers`` get all ``L + 1`` of them (embedding output
  first, as ``output_hidden_states=True`` returns them); the others may get only the last one.
- ``attention_mask``: ``(batch, tokens)``, 1 (or ``True``) on real tokens, on either side.

and masks padding in every step, so a text's vector does not depend on its batch. Heads compute
in their parameters' dtype (float32 by default) whatever the backbone's dtype.

Modes: ``mean``, ``cls`` (first real token), ``eos`` (last real token), ``trainable``
(learned latents cross-attend over last-layer tokens or the EOS vector), ``mltp`` (multi-layer
trainable pooling: per-layer masked means or EOS vectors + layer-position embedding, latent
cross-attention, GEGLU FFN, mean over latents) and ``latent`` (NV-Embed latent
attention: tokens query a learned latent array, MLP, masked mean over tokens). The heads are
described in ``docs/methods.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InvalidRequest

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

POOLING_HEADS: dict[str, type[PoolingHead]] = {}
_H = TypeVar("_H", bound="type[PoolingHead]")


def register_pooling(cls: _H) -> _H:
    """Class decorator: make ``cls`` buildable as pooling mode ``cls.mode``."""
    if cls.mode in POOLING_HEADS:
        raise ValueError(f"Pooling mode '{cls.mode}' is already registered")
    POOLING_HEADS[cls.mode] = cls
    return cls


def pooling_modes() -> list[str]:
    """Names of the registered pooling modes, sorted."""
    return sorted(POOLING_HEADS)


def get_pooling_class(mode: str) -> type[PoolingHead]:
    """The head class of ``mode``; :class:`InvalidRequest` listing the valid modes if none."""
    try:
        return POOLING_HEADS[mode]
    except KeyError:
        raise InvalidRequest(
            f"Invalid pooling mode '{mode}'. Valid modes: {', '.join(pooling_modes())}"
        ) from None


# --- masked reductions ------------------------------------------------------------------------


def _bool_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, T, d)`` over real tokens, accumulated in float32 → ``(B, d)``.

    Padding is zeroed with ``masked_fill`` (not multiplied away), so non-finite values in padded
    positions cannot leak in. A row without real tokens gives zeros.
    """
    mask = _bool_mask(mask)
    total = hidden.masked_fill(~mask.unsqueeze(-1), 0).sum(dim=1, dtype=torch.float32)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)
    return total / count


def first_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token (respects left padding)."""
    return _bool_mask(mask).int().argmax(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whatever the padding side."""
    mask = _bool_mask(mask)
    return mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)


def gather_tokens(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b]]`` for every row ``b`` → ``(B, d)``."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


# --- building blocks --------------------------------------------------------------------------


class GEGLUFeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward: ``W2 (a * gelu(g))`` with ``[a, g] = W1 LN(x)``."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner = dim * mult
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update for ``x`` (the caller adds the residual)."""
        a, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention (LayerNorm on queries and on context)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update ``(B, Q, d)`` for ``queries`` attending over ``context`` ``(B, N, d)``.

        ``context_mask`` ``(B, N)`` marks the context entries that may be attended to; every
        row needs at least one.
        """
        batch, n_q, _ = queries.shape
        n_kv = context.shape[1]
        h, dh = self.num_heads, self.head_dim
        q = self.to_q(self.norm_q(queries)).view(batch, n_q, h, dh).transpose(1, 2)
        kv = self.to_kv(self.norm_kv(context)).view(context.shape[0], n_kv, 2, h, dh)
        k, v = kv.permute(2, 0, 3, 1, 4).expand(-1, batch, -1, -1, -1).unbind(0)
        attn_mask = None if context_mask is None else _bool_mask(context_mask)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(batch, n_q, h * dh))


class LatentPooler(nn.Module):
    """R learned latents cross-attend over a context (residual), GEGLU FFN (residual), mean."""

    def __init__(
        self, dim: int, num_latents: int, num_heads: int, head_dim: int, ffn_mult: int
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.attn = CrossAttention(dim, num_heads, head_dim)
        self.ffn = GEGLUFeedForward(dim, ffn_mult)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, d)`` context (``mask`` ``(B, N)`` or ``None``) → ``(B, d)``."""
        latents = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
        latents = latents + self.attn(latents, context, mask)
        latents = latents + self.ffn(latents)
        return latents.mean(dim=1)


# --- heads ------------------------------------------------------------------------------------


def _positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _choice(mode: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise InvalidRequest(
            f"Invalid source '{value}' for pooling mode '{mode}'. Valid sources: {', '.join(valid)}"
        )
    return value


class PoolingHead(nn.Module):
    """Base class of pooling heads. Subclasses set ``mode`` and extend ``config_keys``."""

    mode: ClassVar[str] = ""
    config_keys: ClassVar[tuple[str, ...]] = ("hidden_size", "num_layers")
    #: Whether ``forward`` needs every layer's hidden states, not just the last one.
    needs_all_layers: bool = False

    def __init__(self, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size = _positive("hidden_size", hidden_size)
        self.num_layers = _positive("num_layers", num_layers)

    @property
    def dim(self) -> int:
        """Width of the pooled vector."""
        return self.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the head computes in (its parameters'; float32 for parameter-free heads)."""
        param = next(self.parameters(), None)
        return torch.float32 if param is None else param.dtype

    def get_config(self) -> dict[str, Any]:
        """``{"mode": ..., key: value for key in config_keys}``; rebuilds the head."""
        return {"mode": self.mode, **{key: getattr(self, key) for key in self.config_keys}}

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pool to ``(batch, dim)``; see the module docstring for the arguments."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.config_keys)

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` and, if the head has parameters, ``model.safetensors``."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(self.get_config(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if state:
            save_file(state, str(path / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> PoolingHead:
        """Rebuild the head saved in ``directory`` (any mode when called on the base class)."""
        from safetensors.torch import load_file

        path = Path(directory)
        config = json.loads((path / CONFIG_FILE).read_text())
        head = build_pooling(config)
        if cls is not PoolingHead and not isinstance(head, cls):
            raise ValueError(f"{path} holds a '{head.mode}' head, not '{cls.mode}'")
        weights = path / WEIGHTS_FILE
        if weights.is_file():
            head.load_state_dict(load_file(str(weights)), strict=True)
        elif any(True for _ in head.parameters()):
            raise ValueError(f"{path} has no {WEIGHTS_FILE} for its '{head.mode}' head")
        return head


@register_pooling
class MeanPooling(PoolingHead):
    """Masked mean of the last layer's token states."""

    mode = "mean"

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return masked_mean(hidden_states[-1], attention_mask)


@register_pooling
class CLSPooling(PoolingHead):
    """The last layer's state of the first real token (respects left padding)."""

    mode = "cls"

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        last = hidden_states[-1]
        return gather_tokens(last, first_token_index(attention_mask)).float()


@register_pooling
class EOSPooling(PoolingHead):
    """The last layer's state of the last real token, found from the mask (any padding side)."""

    mode = "eos"

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        last = hidden_states[-1]
        return gather_tokens(last, last_token_index(attention_mask)).float()


class _LatentHead(PoolingHead):
    """Shared options of the heads built on :class:`LatentPooler`."""

    sources: ClassVar[tuple[str, ...]] = ()
    config_keys = (
        *PoolingHead.config_keys,
        "source",
        "num_latents",
        "num_heads",
        "head_dim",
        "ffn_mult",
    )

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        *,
        source: str,
        num_latents: int = 4,
        num_heads: int = 4,
        head_dim: int | None = None,
        ffn_mult: int = 2,
    ) -> None:
        super().__init__(hidden_size, num_layers)
        self.source = _choice(self.mode, source, self.sources)
        self.num_latents = _positive("num_latents", num_latents)
        self.num_heads = _positive("num_heads", num_heads)
        self.head_dim = _positive("head_dim", head_dim or max(1, hidden_size // num_heads))
        self.ffn_mult = _positive("ffn_mult", ffn_mult)
        self.pooler = LatentPooler(
            hidden_size, self.num_latents, self.num_heads, self.head_dim, self.ffn_mult
        )


@register_pooling
class TrainablePooling(_LatentHead):
    """R learned latents cross-attend over the last layer: all real tokens, or the EOS vector.

    ``source="tokens"`` (design 4) masks padding in the attention; ``source="eos"`` (design 2)
    attends over the single last-real-token vector.
    """

    mode = "trainable"
    sources = ("tokens", "eos")

    def __init__(self, hidden_size: int, num_layers: int, *, source: str = "tokens", **kw: Any):
        super().__init__(hidden_size, num_layers, source=source, **kw)

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        last = hidden_states[-1]
        if self.source == "eos":
            eos = gather_tokens(last, last_token_index(attention_mask))
            return self.pooler(eos.unsqueeze(1).to(self.dtype))
        return self.pooler(last.to(self.dtype), _bool_mask(attention_mask))


@register_pooling
class MultiLayerTrainablePooling(_LatentHead):
    """MLTP: one vector per layer 1..L, + layer-position embedding, latent pooling.

    ``source="mean"`` (design 5) takes each layer's masked token mean; ``source="eos"``
    (design 3) each layer's last-real-token state. The L vectors get a learned (L, d) position
    embedding, R latents cross-attend over them (pre-norm, multi-head, residual), a pre-norm
    GEGLU FFN follows (residual), and the latents are averaged. See ``docs/methods.md``.
    """

    mode = "mltp"
    sources = ("mean", "eos")
    needs_all_layers = True

    def __init__(self, hidden_size: int, num_layers: int, *, source: str = "mean", **kw: Any):
        super().__init__(hidden_size, num_layers, source=source, **kw)
        self.layer_embedding = nn.Parameter(torch.randn(num_layers, hidden_size) * 0.02)

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"mltp pooling needs all {self.num_layers + 1} hidden states (embeddings + "
                f"{self.num_layers} layers), got {len(hidden_states)}"
            )
        layers = hidden_states[1:]  # layer 1..L; the embedding output carries no context
        if self.source == "eos":
            index = last_token_index(attention_mask)
            vectors = torch.stack([gather_tokens(h, index) for h in layers], dim=1)
        else:
            vectors = torch.stack([masked_mean(h, attention_mask) for h in layers], dim=1)
        return self.pooler(vectors.to(self.dtype) + self.layer_embedding)


@register_pooling
class LatentAttentionPooling(PoolingHead):
    """NV-Embed latent attention: tokens query a learned latent array (keys and values).

    Pre-norm cross-attention (residual onto the tokens), pre-norm GELU MLP (residual), then a
    masked mean over real tokens.
    """

    mode = "latent"
    config_keys = (*PoolingHead.config_keys, "num_latents", "num_heads", "head_dim", "mlp_mult")

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        *,
        num_latents: int = 32,
        num_heads: int = 4,
        head_dim: int | None = None,
        mlp_mult: int = 2,
    ) -> None:
        super().__init__(hidden_size, num_layers)
        self.num_latents = _positive("num_latents", num_latents)
        self.num_heads = _positive("num_heads", num_heads)
        self.head_dim = _positive("head_dim", head_dim or max(1, hidden_size // num_heads))
        self.mlp_mult = _positive("mlp_mult", mlp_mult)
        self.latents = nn.Parameter(torch.randn(self.num_latents, hidden_size) * 0.02)
        self.attn = CrossAttention(hidden_size, self.num_heads, self.head_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, hidden_size * self.mlp_mult),
            nn.GELU(),
            nn.Linear(hidden_size * self.mlp_mult, hidden_size),
        )

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor
    ) -> torch.Tensor:
        tokens = hidden_states[-1].to(self.dtype)
        tokens = tokens + self.attn(tokens, self.latents.unsqueeze(0))
        tokens = tokens + self.mlp(tokens)
        return masked_mean(tokens, attention_mask)


# --- construction -----------------------------------------------------------------------------


def build_pooling(
    config: dict[str, Any] | str,
    *,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    seed: int | None = None,
) -> PoolingHead:
    """Build a head from ``{"mode": ..., options}`` (or a bare mode name).

    ``hidden_size`` / ``num_layers`` fill in what the config lacks (a saved config has them).
    With ``seed`` the parameters are initialised from that seed without touching the global RNG.
    Unknown modes and options raise :class:`InvalidRequest` listing the valid ones.
    """
    options: dict[str, Any] = {"mode": config} if isinstance(config, str) else dict(config)
    cls = get_pooling_class(str(options.pop("mode", "")))
    if hidden_size is not None:
        options.setdefault("hidden_size", hidden_size)
    if num_layers is not None:
        options.setdefault("num_layers", num_layers)
    unknown = sorted(set(options) - set(cls.config_keys))
    if unknown:
        raise InvalidRequest(
            f"Invalid option(s) {', '.join(unknown)} for pooling mode '{cls.mode}'. Valid "
            f"options: {', '.join(k for k in cls.config_keys)}"
        )
    missing = [k for k in ("hidden_size", "num_layers") if k not in options]
    if missing:
        raise ValueError(f"build_pooling needs {' and '.join(missing)}")
    factory: Callable[..., PoolingHead] = cls
    if seed is None:
        return factory(**options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**options)
