"""Token-budget batching: group texts of similar length so padding wastes little compute."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Literal

import numpy as np


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    batch_tokens: int,
    max_batch_size: int,
    min_fill: float = 0.0,
    packed: bool = False,
) -> list[np.ndarray]:
    """Split item indices into batches, longest items first.

    Each batch satisfies ``max(lengths[batch]) * len(batch) <= batch_tokens`` (the padded size
    of its forward pass) and ``len(batch) <= max_batch_size``; an item longer than the budget
    still gets a batch of its own. With ``min_fill > 0`` a batch also closes before its real
    tokens would fill less than that fraction of its padded size, so mixed-length inputs do not
    spend most of a big batch on padding. ``packed=True`` plans batches whose texts are laid
    end to end without padding (:mod:`embedder.llm.packing`): the budget then bounds their real
    tokens, ``sum(lengths[batch]) <= batch_tokens``, and ``min_fill`` does not apply. Every
    index appears in exactly one batch.
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
        if packed:
            # Items that fit the budget in real tokens (at least one).
            head = np.cumsum(lens[order[start : start + max_batch_size]])
            size = max(1, int(np.searchsorted(head, batch_tokens, side="right")))
            batches.append(order[start : start + size])
            start += size
            continue
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


def plan_bucketed(
    lengths: Sequence[int] | np.ndarray,
    *,
    batch_tokens: int,
    max_batch_size: int,
    row_step: int,
    length_step: int,
    batch_cost: int,
) -> list[np.ndarray]:
    """Split item indices into batches, longest first, for a device that pads every batch to
    a bucket: rows to a multiple of ``row_step``, tokens to a multiple of ``length_step``
    (CUDA graphs, :mod:`ranker.text.graphs`).

    Among the ways to cut the sorted items into consecutive batches at multiples of
    ``row_step`` (so only the last batch has padded rows), it picks the one with the fewest
    padded tokens plus ``batch_cost`` tokens per batch — what one more pass costs in launches
    and copies. One query's 100 candidates of mixed length (a longest pair of about 200
    tokens, a mean of about 95) in one batch are more than half padding; cut in two or three
    they are far less. Each batch stays within ``batch_tokens`` padded tokens and
    ``max_batch_size`` rows (a single block of ``row_step`` items is always allowed). Exact
    dynamic programming over at most ``ceil(n / row_step)`` cut points.
    """
    if min(batch_tokens, max_batch_size, row_step, length_step) < 1 or batch_cost < 0:
        raise ValueError("batch_tokens, max_batch_size, row_step and length_step must be >= 1")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lens.shape}")
    order = np.argsort(-lens, kind="stable")
    n = int(order.size)
    if n == 0:
        return []
    cuts = [*range(0, n, row_step), n]
    # widths[a]: the padded width of a batch starting at cut a (its first item is its longest).
    widths = [
        max(length_step, -(-max(int(lens[order[c]]), 1) // length_step) * length_step)
        for c in cuts[:-1]
    ]
    best = [0] + [-1] * (len(cuts) - 1)
    prev = [0] * len(cuts)
    for b in range(1, len(cuts)):
        for a in range(b - 1, -1, -1):
            rows = cuts[b] - cuts[a]
            padded_rows = -(-rows // row_step) * row_step
            tokens = padded_rows * widths[a]
            if b - a > 1 and (rows > max_batch_size or tokens > batch_tokens):
                break  # batches that start earlier are larger still
            cost = best[a] + tokens + batch_cost
            if best[b] < 0 or cost < best[b]:
                best[b], prev[b] = cost, a
    batches: list[np.ndarray] = []
    b = len(cuts) - 1
    while b > 0:
        a = prev[b]
        batches.append(order[cuts[a] : cuts[b]])
        b = a
    return batches[::-1]


def flatten_ids(
    rows: Sequence[Sequence[int]], *, append_id: int | None = None, empty_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(flat ids, lengths)`` of token id lists.

    ``append_id`` is added after every row (e.g. EOS). Rows that would stay empty get one
    ``empty_id`` token, so every text has a real token to pool over.
    """
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    if append_id is not None:
        flat = np.insert(flat, np.cumsum(lengths), append_id)
        lengths = lengths + 1
    empty = lengths == 0
    if empty.any():
        starts = np.cumsum(lengths) - lengths
        flat = np.insert(flat, starts[empty], empty_id)
        lengths = np.where(empty, 1, lengths)
    return flat, lengths


def pad_rows(
    flat: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    *,
    pad_id: int,
    side: Literal["left", "right"] = "right",
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` of shape ``(len(starts), max(lengths))`` for rows
    ``flat[starts[i] : starts[i] + lengths[i]]``, padded with ``pad_id`` on ``side``."""
    width = int(lengths.max())
    cols = np.arange(width)
    mask = cols >= (width - lengths)[:, None] if side == "left" else cols < lengths[:, None]
    # Position in ``flat`` of every real token of the batch, in row-major order (the order in
    # which boolean-mask assignment fills ``mask``).
    row_first = np.cumsum(lengths) - lengths
    src = np.repeat(starts - row_first, lengths) + np.arange(int(lengths.sum()))
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = flat[src]
    return ids, mask
