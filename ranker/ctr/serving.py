"""A trained CTR module behind the serving contract (:class:`ranker.ctr.base.CTRServingModel`):
numpy in, numpy out, no gradients.

States are the module's BSE tensors as ``float32``/``int64`` numpy arrays plus
``"n_events"``; a state is checked against the model before use, so one written by another
kind or configuration is refused instead of silently misread.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from core.errors import InvalidRequest
from ranker.ctr.base import UserState
from ranker.ctr.catalogue import ItemCatalogue
from ranker.ctr.config import CTRConfig
from ranker.ctr.models import CTRModule, State

logger = logging.getLogger(__name__)

N_EVENTS = "n_events"


class CTRModel:
    """A loaded CTR model: ``encode``/``update`` a user's state, ``score`` candidates."""

    def __init__(
        self,
        module: CTRModule,
        catalogue: ItemCatalogue,
        *,
        name: str,
        version: str,
        device: str = "cpu",
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

    def _to_torch(self, state: UserState) -> State:
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
            out[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
        return out

    def empty_state(self) -> UserState:
        """The state of a user without history."""
        with torch.inference_mode():
            state = _to_numpy(self.module.empty_state())
        state[N_EVENTS] = np.asarray(0, dtype=np.int64)
        return state

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
        return out

    def score(self, state: UserState | None, candidates: np.ndarray) -> np.ndarray:
        """Click probabilities (``float32``) of candidate rows for a user; ``state=None`` is a
        user without history. An unknown candidate (``-1``) is scored as an item with neither
        an item nor a category embedding."""
        arr = self._rows(candidates, "Candidate rows")
        current = self._to_torch(state if state is not None else self.empty_state())
        with torch.inference_mode():
            logits = self.module.score_state(current, torch.from_numpy(arr).to(self.device))
            probs = torch.sigmoid(logits.float())
        return probs.cpu().numpy().astype(np.float32, copy=False)


def _numpy_dtype(t: torch.Tensor) -> np.dtype:
    return np.dtype(np.int64) if not t.is_floating_point() else np.dtype(np.float32)


def _to_numpy(state: State) -> UserState:
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else torch.long).numpy()
        for k, v in state.items()
    }
