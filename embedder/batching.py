"""Token-budget batching: group texts of similar length so padding wastes little compute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(
    lengths: Sequence[int] | np.ndarray, *, batch_tokens: int, max_batch_size: int
) -> list[np.ndarray]:
    """Split item indices into batches, longest items first.

    Each batch satisfies ``max(lengths[batch]) * len(batch) <= batch_tokens`` (the padded size
    of its forward pass) and ``len(batch) <= max_batch_size``; an item longer than the budget
    still gets a batch of its own. Every index appears in exactly one batch.
    """
    if batch_tokens < 1 or max_batch_size < 1:
        raise ValueError(
            f"batch_tokens and max_batch_size must be >= 1, got {batch_tokens} and {max_batch_size}"
        )
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
        size = max(1, min(max_batch_size, batch_tokens // longest, order.size - start))
        batches.append(order[start : start + size])
        start += size
    return batches
