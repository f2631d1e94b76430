"""Packed batches: a batch's texts laid end to end in one row, no padding, varlen attention.

A padded batch computes every position up to its longest text; a packed one computes real
tokens only. The texts of a batch are concatenated into one ``(1, T)`` row with positions
restarting at 0 for each text, and attention stays inside each text: on CUDA through
``torch.nn.attention.varlen.varlen_attn`` (flash attention over cumulative sequence lengths);
elsewhere through SDPA with a block-diagonal mask (correct, for tests and small inputs, not
fast). Pooling heads then read the hidden states gathered back into a padded
``(B, T_max, d)`` view with its mask, so every head works unchanged.

The attention function is registered with transformers' ``AttentionInterface`` under
:data:`PACKED_ATTENTION`; :func:`packed_attention` switches a decoder to it for one forward.
That name has no mask function, so transformers builds no mask for it (and never looks for
packed sequences in the position ids, which would synchronise with the device).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Name of the packed attention function in transformers' ``AttentionInterface``.
PACKED_ATTENTION = "quarry_packed"


@dataclass(frozen=True)
class PackedBatch:
    """Host arrays of one packed batch (see :func:`pack_rows`)."""

    input_ids: np.ndarray  # (1, T) int64, the texts end to end
    position_ids: np.ndarray  # (1, T) int64, 0..len-1 within each text
    cu_seqlens: np.ndarray  # (B + 1,) int32, text boundaries in the row
    gather: np.ndarray  # (B, T_max) int64, row position of each padded slot
    mask: np.ndarray  # (B, T_max) bool, real slots of the padded view (right padding)


def pack_rows(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> PackedBatch:
    """Pack rows ``flat[starts[i] : starts[i] + lengths[i]]`` (every length >= 1)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    row_first = np.cumsum(lengths) - lengths  # where each text starts in the packed row
    within = np.arange(total) - np.repeat(row_first, lengths)
    src = np.repeat(starts, lengths) + within
    width = int(lengths.max())
    cols = np.arange(width)
    mask = cols < lengths[:, None]
    # Padded slots point at their text's first token: finite values that every head masks.
    gather = row_first[:, None] + np.where(mask, cols, 0)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return PackedBatch(flat[src][None, :], within[None, :], cu, gather, mask)


def unpack(hidden: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """Packed ``(1, T, d)`` hidden states → the padded ``(B, T_max, d)`` view of ``gather``."""
    return hidden[0][gather]


def _find_varlen() -> tuple[Callable[..., Any], frozenset[str]] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


#: ``varlen_attn`` and its keyword names, or ``None`` if this torch has none. Resolved at import
#: (cheap: torch is loaded already), so compiled code reads a constant.
_VARLEN = _find_varlen()


def varlen_available(device: str) -> bool:
    """Whether packed batches run on flash varlen kernels on ``device``."""
    return device.startswith("cuda") and _VARLEN is not None


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function over one packed row: ``(1, H, T, D)`` → ``(1, T, H, D)``.

    Needs ``cu_seq_lens_q`` and ``max_length_q`` in ``kwargs`` (passed to the model forward).
    """
    cu = kwargs["cu_seq_lens_q"]
    max_len = int(kwargs["max_length_q"])
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    heads = query.shape[1]
    native_gqa = query.is_cuda and _VARLEN is not None and "enable_gqa" in _VARLEN[1]
    if key.shape[1] != heads and not native_gqa:  # grouped-query attention, by copies
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.is_cuda and _VARLEN is not None:
        fn, params = _VARLEN
        extra: dict[str, Any] = {"scale": scaling}
        if native_gqa and k.shape[1] != heads:
            extra["enable_gqa"] = True
        if "window_size" in params:
            extra["window_size"] = (-1, 0) if causal else (-1, -1)
        else:
            extra["is_causal"] = causal
        out = fn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **extra)
        return out.unsqueeze(0), None
    return _masked_fallback(query, key, value, cu, causal, scaling), None


def _masked_fallback(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu: torch.Tensor,
    causal: bool,
    scaling: float | None,
) -> torch.Tensor:
    """SDPA with a block-diagonal (and causal) boolean mask over the packed row."""
    total = query.shape[2]
    positions = torch.arange(total, device=query.device)
    segment = torch.searchsorted(cu[1:].to(positions.dtype), positions, right=True)
    allowed = segment[:, None] == segment[None, :]
    if causal:
        allowed &= positions[:, None] >= positions[None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2)


@functools.cache
def register_packed_attention() -> None:
    """Register :func:`packed_attention_forward` with transformers (once)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Run ``model`` (a transformers decoder) with packed attention inside the block."""
    register_packed_attention()
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
