"""A trained CTR module behind the serving contract (:class:`ranker.ctr.base.CTRServingModel`):
numpy in, numpy out, no gradients.

States are the module's BSE tensors as ``float32``/``int64`` numpy arrays plus
``"n_events"``; a state is checked against the model before use, so one written by another
kind or configuration is refused instead of silently misread. The states ``encode`` and
``update`` return are read-only: a state is a value, and ``update`` makes a new one.

On CUDA, scoring is latency-bound, not compute-bound, so two things keep a request short:

- models whose score path allows it (SDIM, DARE, TWIN; not DIN) replay a CUDA graph of it,
  captured per padded shape (:mod:`ranker.ctr.graphs`);
- the tensors of the last few *read-only* states scored are kept (device copies; on the
  CPU, the copies torch makes of read-only memory), keyed by the arrays' identity: the cache
  holds the arrays, so an identity is never reused while cached, and read-only arrays cannot
  change under it. The in-process state store hands the same arrays out until a user's state
  changes; a state decoded from Redis is new and writeable on every request and is copied.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
import torch

from core.errors import InvalidRequest
from ranker.ctr.base import UserState
from ranker.ctr.catalogue import ItemCatalogue
from ranker.ctr.config import CTRConfig
from ranker.ctr.graphs import GraphCaptureError, PaddedScorer
from ranker.ctr.models import CTRModule, State

logger = logging.getLogger(__name__)

N_EVENTS = "n_events"

#: Read-only states whose tensors a model keeps (the least recently scored is dropped).
STATE_CACHE_SIZE = 32


class CTRModel:
    """A loaded CTR model: ``encode``/``update`` a user's state, ``score`` candidates.

    The module's weights must not change once it is served (new weights are a new version).
    ``cuda_graphs=False`` scores eagerly on CUDA too; ``state_cache`` is how many read-only
    states' tensors are kept (0: none).
    """

    def __init__(
        self,
        module: CTRModule,
        catalogue: ItemCatalogue,
        *,
        name: str,
        version: str,
        device: str = "cpu",
        cuda_graphs: bool = True,
        state_cache: int = STATE_CACHE_SIZE,
    ) -> None:
        if len(catalogue) != module.config.n_items:
            raise InvalidRequest(
                f"The catalogue has {len(catalogue)} items, the model {module.config.n_items}"
            )
        self.module = module.to(device).eval()
        self.catalogue = catalogue
        self.name = name
        self.kind = module.config.kind
        self.version = version
        self.device = torch.device(device)
        with torch.inference_mode():
            empty = self.module.empty_state()
        # Shapes and dtypes a state must have; None: an axis that grows (DIN/DARE behaviours).
        self._layout = {
            k: ((None if v.shape[0] == 0 else v.shape[0], *v.shape[1:]), _numpy_dtype(v))
            for k, v in empty.items()
        }
        # The arrays scoring reads (every array, for a module that does not say).
        self._score_keys = self.module.score_keys or tuple(self._layout)
        with torch.no_grad():
            self.module.prepare_serving()
        self._empty = self.empty_state()
        self._lock = threading.Lock()
        self._cache_size = state_cache
        self._cache: OrderedDict[tuple[int, ...], tuple[tuple[np.ndarray, ...], State]] = (
            OrderedDict()
        )
        self._graphs: PaddedScorer | None = None
        if cuda_graphs and self.device.type == "cuda" and self.module.cuda_graphs:
            keys = self._score_keys
            self._graphs = PaddedScorer(
                self.module.score_state,
                {k: empty[k] for k in keys},
                growing=[k for k in keys if self._layout[k][0][0] is None],
                length_limit=self.config.max_history,
                capture=True,
            )

    @property
    def config(self) -> CTRConfig:
        return self.module.config

    def __repr__(self) -> str:
        return f"CTRModel(name={self.name!r}, kind={self.kind!r}, version={self.version!r})"

    def _rows(self, rows: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(rows)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidRequest(f"{what} must be a 1-D array of integer catalogue rows")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < -1 or arr.max() >= len(self.catalogue)):
            raise InvalidRequest(f"{what} must be catalogue rows (0 .. {len(self.catalogue) - 1})")
        return arr

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether scoring replays CUDA graphs (false on CPU, for DIN, or after a capture
        failed)."""
        return self._graphs is not None

    def _to_torch(self, state: UserState) -> State:
        """``state`` checked against the model, as tensors on its device."""
        return {k: _tensor(v, self.device) for k, v in self._checked(state).items()}

    def _checked(self, state: UserState) -> dict[str, np.ndarray]:
        """``state``'s arrays (C-contiguous) once they fit the model."""
        missing = sorted(set(self._layout) - set(state))
        if missing:
            raise InvalidRequest(
                f"The state is not a {self.kind} state (missing {', '.join(missing)}); "
                "re-encode the history with this model"
            )
        out = {}
        for key, (shape, dtype) in self._layout.items():
            arr = np.asarray(state[key])
            fits = arr.ndim == len(shape) and all(
                want is None or have == want for have, want in zip(arr.shape, shape, strict=True)
            )
            if not fits or arr.dtype != dtype:
                wanted = ", ".join("*" if d is None else str(d) for d in shape)
                raise InvalidRequest(
                    f"State array {key!r} is {arr.shape} {arr.dtype}, this model needs "
                    f"({wanted}) {dtype}; re-encode the history with this model"
                )
            out[key] = np.ascontiguousarray(arr)
        return out

    def _resident(self, arrays: dict[str, np.ndarray]) -> State | None:
        """Tensors (on the model's device) of the score arrays of a read-only state, from the
        cache or made and cached now; ``None`` for a writeable state (or with no cache)."""
        held = tuple(arrays[k] for k in self._score_keys)
        if not self._cache_size or not all(map(_frozen, held)):
            return None
        ident = tuple(map(id, held))
        with self._lock:
            hit = self._cache.get(ident)
            if hit is not None and all(a is b for a, b in zip(hit[0], held, strict=True)):
                self._cache.move_to_end(ident)
                return hit[1]
        tensors = {k: _tensor(a, self.device) for k, a in zip(self._score_keys, held, strict=True)}
        with self._lock:
            self._cache[ident] = (held, tensors)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return tensors

    def empty_state(self) -> UserState:
        """The state of a user without history."""
        with torch.inference_mode():
            state = _to_numpy(self.module.empty_state())
        state[N_EVENTS] = np.asarray(0, dtype=np.int64)
        return _read_only(state)

    def encode(self, rows: np.ndarray) -> UserState:
        """The state of a history given as item rows, oldest first (a full rebuild)."""
        return self.update(self.empty_state(), rows)

    def update(self, state: UserState, rows: np.ndarray) -> UserState:
        """``state`` with the behaviours ``rows`` (newer than all before) appended.

        Unknown items (``-1``) are skipped: they have no embedding. ``n_events`` counts the
        behaviours encoded.
        """
        arr = self._rows(rows, "Behaviour rows")
        known = arr[arr >= 0]
        if len(known) < len(arr):
            logger.debug("Skipped %d unknown behaviours", len(arr) - len(known))
        current = self._to_torch(state)
        with torch.inference_mode():
            new = self.module.extend_state(current, torch.from_numpy(known).to(self.device))
        out = _to_numpy(new)
        out[N_EVENTS] = np.asarray(int(state.get(N_EVENTS, 0)) + len(known), dtype=np.int64)
        return _read_only(out)

    def score(self, state: UserState | None, candidates: np.ndarray) -> np.ndarray:
        """Click probabilities (``float32``) of candidate rows for a user; ``state=None`` is a
        user without history. An unknown candidate (``-1``) is scored as an item with neither
        an item nor a category embedding."""
        arr = self._rows(candidates, "Candidate rows")
        arrays = self._checked(state) if state is not None else self._empty
        with torch.inference_mode():
            resident = self._resident(arrays)
            if self._graphs is not None:
                probs = self._score_graphed(arrays, resident, arr)
                if probs is not None:
                    return probs
            if resident is None:
                resident = {k: _tensor(arrays[k], self.device) for k in self._score_keys}
            logits = self.module.score_state(resident, torch.from_numpy(arr).to(self.device))
            probs_t = torch.sigmoid(logits.float())
        return probs_t.cpu().numpy().astype(np.float32, copy=False)

    def _score_graphed(
        self, arrays: dict[str, np.ndarray], resident: State | None, rows: np.ndarray
    ) -> np.ndarray | None:
        """Probabilities from the CUDA graphs; ``None`` once capturing has failed."""
        # A CPU tensor goes straight into the graph's input buffer: one copy, not two.
        inputs = resident
        if inputs is None:
            inputs = {k: _tensor(arrays[k], "cpu") for k in self._score_keys}
        with self._lock:  # one set of input buffers
            graphs = self._graphs
            if graphs is None:
                return None
            try:
                return graphs(inputs, rows)
            except GraphCaptureError as exc:
                logger.warning("CTR model %s: %s; scoring eagerly from now on", self.name, exc)
                self._graphs = None
                return None


def _tensor(arr: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """``arr`` as a tensor on ``device``, sharing its memory on the CPU when it is writeable
    (torch does not alias read-only memory: that one is copied)."""
    if arr.flags.writeable:
        return torch.from_numpy(arr).to(device)
    return torch.tensor(arr, device=device)


def _frozen(arr: object) -> bool:
    """Whether an array's memory cannot change under it: it and every array it views are
    read-only."""
    while isinstance(arr, np.ndarray):
        if arr.flags.writeable:
            return False
        arr = arr.base
    return True


def _read_only(state: UserState) -> UserState:
    for arr in state.values():
        arr.flags.writeable = False
    return state


def _numpy_dtype(t: torch.Tensor) -> np.dtype:
    return np.dtype(np.int64) if not t.is_floating_point() else np.dtype(np.float32)


def _to_numpy(state: State) -> UserState:
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else torch.long).numpy()
        for k, v in state.items()
    }
