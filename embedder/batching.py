"""Token-budget batching: group texts of similar length so padding wastes little compute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    batch_tokens: int,
    max_batch_size: int,
    min_fill: float = 0.0,
) -> list[np.ndarray]:
    """Split item indices into batches, longest items first.

    Each batch satisfies ``max(lengths[batch]) * len(batch) <= batch_tokens`` (the padded size
    of its forward pass) and ``len(batch) <= max_batch_size``; an item longer than the budget
    still gets a batch of its own. With ``min_fill > 0`` a batch also closes before its real
    tokens would fill less than that fraction of its padded size, so mixed-length inputs do not
    spend most of a big batch on padding. Every index appears in exactly one batch.
    """
    if batch_tokens < 1 or max_batch_size < 1:
        raise ValueError(
            f"batch_tokens and max_batch_size must be >= 1, got {batch_tokens} and {max_batch_size}"
        )
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be in [0, 1], got {min_fill}")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lens.shape}")
    if lens.size and lens.min() < 0:
        raise ValueError("lengths must be non-negative")
    # Stable sort keeps equal-length items in input order, so plans are deterministic.
    order = np.argsort(-lens, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < order.size:
        # Sorted descending, so a batch's first item is its longest.
        longest = max(int(lens[order[start]]), 1)
        size = min(max_batch_size, batch_tokens // longest, order.size - start)
        if min_fill > 0.0 and size > 1:
            # Fill of the first k items is their mean length / longest: non-increasing in k.
            head = np.maximum(lens[order[start : start + size]], 1)
            fill = np.cumsum(head) / (np.arange(1, size + 1) * longest)
            size = int(np.count_nonzero(fill >= min_fill))
        size = max(1, size)
        batches.append(order[start : start + size])
        start += size
    return batches
