"""A sequence classifier's logits through fixed-shape buffers, replayed as CUDA graphs.

Scoring one query's 100 candidates with the MiniLM cross-encoder is about a hundred small
kernels; on an H200 launching them from Python took most of the forward's 4.5 ms per query
(``bench/results/encoder_profile_cuda.json``), far more than the GPU work. A CUDA graph
replays them with one launch, but only at the shapes it was captured with, so
:class:`GraphedLogits` pads a batch to a bucket: rows to the next multiple of
:data:`ROW_STEP` (up to :data:`MAX_ROWS`), tokens to the next multiple of
:data:`LENGTH_STEP`. Padded tokens are masked; padded rows hold one unmasked pad token (so
no row is fully masked) and their logits are dropped. Each bucket is captured on first use.

A batch comes as host arrays and is padded to its bucket on the host, into one stacked
array (ids, mask, segment ids) that reaches the GPU in one page-locked copy: a batch costs the
host one copy and one replay, not a copy and a fill kernel per input.

All graphs share one memory pool, so memory is that of the largest bucket, not the sum;
replays are serialised by a lock and each output is copied out before the lock is released
(a later replay may reuse the memory). The padding and the buffers are plain torch and also
run without capture (``capture=False``): the CPU tests hold padded logits equal to unpadded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ranker.cuda_graphs import capture

logger = logging.getLogger(__name__)

#: Rows (pairs) of a captured batch are a multiple of this ...
ROW_STEP = 16
#: ... up to this many; a larger batch runs eagerly.
MAX_ROWS = 256
#: Tokens per row of a captured batch are a multiple of this.
LENGTH_STEP = 32


class GraphCaptureError(RuntimeError):
    """A batch could not be captured as a CUDA graph (the caller runs eagerly)."""


Logits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def bucket(n: int, step: int) -> int:
    """``n`` rounded up to a multiple of ``step`` (at least ``step``)."""
    return max(step, -(-n // step) * step)


class _Captured:
    """The input buffers of one bucket (views of one stacked tensor, filled by one copy) and
    how to fill its output buffer."""

    def __init__(self, rows: int, length: int, with_types: bool, device: torch.device) -> None:
        planes = 3 if with_types else 2
        self.inputs = torch.zeros((planes, rows, length), dtype=torch.long, device=device)
        self.ids = self.inputs[0]
        self.mask = self.inputs[1]
        self.types = self.inputs[2] if with_types else None
        self.out: torch.Tensor | None = None
        self.run: Callable[[], object] | None = None


class GraphedLogits:
    """``logits(ids, mask, types)`` of batches padded to buckets, one CUDA graph per bucket
    (``capture=False``: the same buffers, run eagerly). Thread-safe."""

    def __init__(
        self,
        logits: Logits,
        *,
        pad_id: int,
        max_length: int,
        device: torch.device | str,
        capture: bool = True,
    ) -> None:
        self.logits = logits
        self.pad_id = pad_id
        self.max_length = max_length
        self.device = torch.device(device)
        self.capture = capture
        self._lock = threading.Lock()
        self._buckets: dict[tuple[int, int, bool], _Captured] = {}
        self._pool: Any = torch.cuda.graph_pool_handle() if capture else None

    def fits(self, rows: int, length: int) -> bool:
        """Whether a batch of this shape runs through a bucket (else: eagerly)."""
        return 0 < rows <= MAX_ROWS and 0 < length <= self.max_length

    def warm(self, rows: int, length: int, *, with_types: bool) -> int:
        """Capture every bucket of at most ``rows`` x ``length`` tokens now, ahead of traffic
        (otherwise a bucket's first use captures it inside a request). Returns how many were
        new."""
        made = 0
        for r in range(ROW_STEP, min(rows, MAX_ROWS) + 1, ROW_STEP):
            for n in range(LENGTH_STEP, min(length, self.max_length) + 1, LENGTH_STEP):
                if (r, n, with_types) in self._buckets:
                    continue
                ids = np.full((r, n), self.pad_id, dtype=np.int64)
                self(ids, np.ones_like(ids), np.zeros_like(ids) if with_types else None)
                made += 1
        return made

    def captured(self) -> list[tuple[int, int]]:
        """``(rows, length)`` of the buckets made so far."""
        return sorted({(r, n) for r, n, _ in self._buckets})

    def __call__(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None) -> torch.Tensor:
        """The logits of the ``ids.shape[0]`` rows (a new tensor on the device) of a batch
        given as host arrays: token ids, attention mask (1/0 or bool), segment ids or None."""
        rows, length = ids.shape
        if not self.fits(rows, length):
            raise ValueError(f"a batch of {rows} x {length} tokens fits no bucket")
        shape = (
            bucket(rows, ROW_STEP),
            min(bucket(length, LENGTH_STEP), self.max_length),
            types is not None,
        )
        staged = self._stage(shape, ids, mask, types)
        with self._lock:
            slot = self._buckets.get(shape)
            if slot is None:
                slot = _Captured(*shape, self.device)
                self._buckets[shape] = slot
            slot.inputs.copy_(staged, non_blocking=True)
            if slot.run is None:
                self._prepare(slot, shape)
            assert slot.run is not None and slot.out is not None
            slot.run()
            return slot.out[:rows].clone()

    def _stage(
        self,
        shape: tuple[int, int, bool],
        ids: np.ndarray,
        mask: np.ndarray,
        types: np.ndarray | None,
    ) -> torch.Tensor:
        """The batch padded to its bucket on the host, as one (page-locked on CUDA) tensor:
        padded tokens masked, padded rows one visible pad token (never all masked)."""
        rows, length = ids.shape
        bucket_rows, bucket_length, with_types = shape
        host = np.zeros((3 if with_types else 2, bucket_rows, bucket_length), dtype=np.int64)
        host[0].fill(self.pad_id)
        host[0, :rows, :length] = ids
        host[1, :rows, :length] = mask
        host[1, rows:, 0] = 1
        if with_types:
            assert types is not None
            host[2, :rows, :length] = types
        staged = torch.from_numpy(host)
        # The caching host allocator keeps the page-locked block until the copy has run.
        return staged.pin_memory() if self.device.type == "cuda" else staged

    def _prepare(self, slot: _Captured, shape: tuple[int, int, bool]) -> None:
        def step() -> torch.Tensor:
            return self.logits(slot.ids, slot.mask, slot.types)

        if not self.capture:

            def eager() -> None:
                slot.out = step()

            slot.run = eager
            slot.out = step()
            return
        try:
            graph, slot.out = capture(step, self.device, pool=self._pool)
        except Exception as exc:
            del self._buckets[shape]
            raise GraphCaptureError(
                f"capturing the classifier at {shape[0]} x {shape[1]} tokens failed: {exc}"
            ) from exc
        slot.run = graph.replay
        logger.debug("captured the classifier at %d rows x %d tokens", shape[0], shape[1])
