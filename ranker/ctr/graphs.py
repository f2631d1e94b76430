"""Scoring through fixed-shape buffers, replayed as CUDA graphs.

Scoring one user's candidates is a few dozen small kernels; on a GPU their launches, not
their work, set the latency. A CUDA graph replays them with one launch, but only for the
shapes it was captured with, so :class:`PaddedScorer` pads:

- candidates to a bucket size (:data:`CANDIDATE_BUCKETS`) with ``-1`` rows (an unknown item,
  zero embeddings); more candidates than the largest bucket are scored a bucket at a time;
- a growing state (DARE/TWIN keep a row per behaviour) to a length bucket
  (:func:`length_bucket`), the padding marked by ``state[VALID]``.

Each (candidate bucket, length bucket) is captured on first use and replayed after. The
padding and the static buffers are plain torch and also run without capture
(``capture=False``): that is how the CPU tests hold padded scoring equal to unpadded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from ranker.ctr.models import VALID, State
from ranker.cuda_graphs import capture

logger = logging.getLogger(__name__)

#: Candidate counts a captured forward takes (padded up to the next one).
CANDIDATE_BUCKETS = (64, 128, 256, 512, 1024)

#: The fewest rows a growing state is padded to.
MIN_LENGTH_BUCKET = 64

#: The module's score path: state tensors and candidate rows -> logits.
ScoreForward = Callable[[State, torch.Tensor], torch.Tensor]


class GraphCaptureError(RuntimeError):
    """A forward could not be captured as a CUDA graph (the caller scores eagerly)."""


def candidate_chunks(
    n: int, buckets: Sequence[int] = CANDIDATE_BUCKETS
) -> list[tuple[int, int, int]]:
    """``(start, stop, bucket)`` pieces that cover ``n`` candidates: whole pieces of the
    largest bucket, then the rest padded up to the smallest bucket that holds it."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise ValueError(f"buckets must be increasing positive sizes, got {buckets!r}")
    largest = buckets[-1]
    out = [(start, start + largest, largest) for start in range(0, n - largest + 1, largest)]
    start = len(out) * largest
    if start < n:
        out.append((start, n, next(b for b in buckets if b >= n - start)))
    return out


def length_bucket(n: int, limit: int | None = None, minimum: int = MIN_LENGTH_BUCKET) -> int:
    """The rows a growing state of ``n`` rows is padded to: the next power of two (at least
    ``minimum``), but no more than ``limit`` (the most rows such a state holds) when ``n``
    is within it."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    size = max(minimum, 1 << max(n - 1, 0).bit_length())
    if limit is not None and n <= limit:
        size = min(size, limit)
    return max(size, n)


def pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` followed by ``-1`` (an unknown item: zero embeddings) up to ``size``."""
    if len(rows) > size:
        raise ValueError(f"{len(rows)} rows do not fit in {size}")
    out = np.full(size, -1, dtype=np.int64)
    out[: len(rows)] = rows
    return out


class PaddedScorer:
    """Click probabilities of candidates for one state through fixed-shape input buffers.

    ``forward`` is the module's score path (``module.score_state``); ``templates`` has an
    empty state's tensor for each key it reads (dtype, device and trailing shape);
    ``growing`` names the keys whose first axis counts behaviours, padded to a length bucket
    up to ``length_limit``. With ``capture`` (CUDA only), each shape's forward is a CUDA
    graph; without, the same buffers run eagerly.

    Not thread-safe: the buffers are shared, so callers serialise calls.
    """

    def __init__(
        self,
        forward: ScoreForward,
        templates: Mapping[str, torch.Tensor],
        *,
        growing: Collection[str] = (),
        length_limit: int | None = None,
        capture: bool,
        buckets: Sequence[int] = CANDIDATE_BUCKETS,
    ) -> None:
        unknown = sorted(set(growing) - set(templates))
        if unknown:
            raise ValueError(f"growing keys {unknown} are not state keys {sorted(templates)}")
        devices = {t.device for t in templates.values()}
        if len(devices) != 1:
            raise ValueError(
                f"state templates must share one device, got {sorted(map(str, devices))}"
            )
        self.device = devices.pop()
        if capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        candidate_chunks(0, buckets)  # checks the buckets
        self.forward = forward
        self.templates = dict(templates)
        self.growing = frozenset(growing)
        self.length_limit = length_limit
        self.capture = capture
        self.buckets = tuple(buckets)
        self._length = torch.zeros((), dtype=torch.long, device=self.device)
        self._items: dict[int, torch.Tensor] = {}
        self._states: dict[int | None, State] = {}
        self._runs: dict[tuple[int, int | None], tuple[Callable[[], object], torch.Tensor]] = {}

    @property
    def shapes(self) -> list[tuple[int, int | None]]:
        """The (candidate bucket, length bucket) shapes prepared so far."""
        return sorted(self._runs, key=lambda k: (k[0], -1 if k[1] is None else k[1]))

    def __call__(self, state: Mapping[str, torch.Tensor], rows: np.ndarray) -> np.ndarray:
        """Probabilities ``(len(rows),)`` ``float32`` of candidate ``rows`` (``int64``).

        ``state`` holds a tensor for every template key, on this device or on the CPU (then
        copied straight into the input buffer); growing keys share their number of rows.
        """
        lengths = {state[k].shape[0] for k in self.growing}
        if len(lengths) > 1:
            raise ValueError(f"growing state arrays differ in length: {sorted(lengths)}")
        length = lengths.pop() if lengths else None
        padded = None if length is None else length_bucket(length, self.length_limit)
        buffers = self._state_buffers(padded)
        for key, target in buffers.items():
            # Rows past a growing state's length keep an earlier state's (finite) values:
            # VALID masks them out.
            target[: state[key].shape[0]].copy_(state[key])
        if length is not None:
            self._length.fill_(length)
        out = np.empty(len(rows), dtype=np.float32)
        for start, stop, bucket in candidate_chunks(len(rows), self.buckets):
            items = self._items_buffer(bucket)
            items.copy_(torch.from_numpy(pad_rows(rows[start:stop], bucket)))
            run, probs = self._run(bucket, padded)
            run()
            out[start:stop] = probs[: stop - start].cpu().numpy()
        return out

    def _items_buffer(self, bucket: int) -> torch.Tensor:
        if bucket not in self._items:
            self._items[bucket] = torch.full((bucket,), -1, dtype=torch.long, device=self.device)
        return self._items[bucket]

    def _state_buffers(self, padded: int | None) -> State:
        """The input buffers of one length bucket (``None``: a state that does not grow)."""
        if padded not in self._states:
            buffers = {}
            for key, template in self.templates.items():
                rows = padded if key in self.growing else template.shape[0]
                assert rows is not None
                # Zeros, so padding rows are finite: their weights are exactly 0, never NaN.
                buffers[key] = template.new_zeros((rows, *template.shape[1:]))
            self._states[padded] = buffers
        return self._states[padded]

    def _run(self, bucket: int, padded: int | None) -> tuple[Callable[[], object], torch.Tensor]:
        key = (bucket, padded)
        if key not in self._runs:
            self._runs[key] = self._prepare(bucket, padded)
        return self._runs[key]

    def _prepare(
        self, bucket: int, padded: int | None
    ) -> tuple[Callable[[], object], torch.Tensor]:
        """What scores one shape: a function that fills the returned output buffer."""
        state = self._state_buffers(padded)
        items = self._items_buffer(bucket)

        def step() -> torch.Tensor:
            inputs = dict(state)
            if padded is not None:
                inputs[VALID] = torch.arange(padded, device=self.device) < self._length
            return torch.sigmoid(self.forward(inputs, items).float())

        if not self.capture:
            probs = torch.empty(bucket, dtype=torch.float32, device=self.device)
            return (lambda: probs.copy_(step())), probs
        try:
            graph, probs = capture(step, self.device)
        except Exception as exc:
            raise GraphCaptureError(
                f"capturing {bucket} candidates x {padded} rows failed: {exc}"
            ) from exc
        logger.debug("Captured the CTR score forward: %d candidates, %s state rows", bucket, padded)
        return graph.replay, probs
