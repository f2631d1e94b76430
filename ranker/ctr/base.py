"""The CTR serving contract: a user's long behaviour sequence is encoded *ahead of the
query* (behaviour-sequence encoding, BSE) into a :data:`UserState`, and a request scores
candidates against that state only, so its cost does not grow with the history.

- SDIM's state is, for every (hash function, code), the sum of the embeddings of the
  behaviours hashed there and their count: scoring hashes the candidates and gathers.
- DARE/TWIN keep the attention keys and representation rows of the (most recent) behaviours:
  scoring takes the top-k keys for each candidate.
- DIN keeps the behaviour embeddings (the full-attention baseline).

States are plain numpy arrays (they go to Redis as bytes) and are only valid for the model
version that wrote them: a request never mixes versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

#: One user's encoded history: named arrays, plus ``"n_events"`` (shape ``()``, int64).
UserState = dict[str, np.ndarray]


@runtime_checkable
class Catalogue(Protocol):
    """The items a model knows: external item id -> embedding row, and each row's category."""

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """``int64`` rows of ``item_ids``; an unknown id gets ``-1``."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class CTRServingModel(Protocol):
    """A trained CTR model as the serving path sees it (numpy in, numpy out)."""

    #: The name it was loaded by, its kind (``din``, ``din-short``, ``sdim``, ``dare``,
    #: ``twin``) and a version that changes whenever its weights change.
    name: str
    kind: str
    version: str
    catalogue: Catalogue

    def encode(self, rows: np.ndarray) -> UserState:
        """The state of a history given as item rows, oldest first (a full rebuild)."""
        ...

    def update(self, state: UserState, rows: np.ndarray) -> UserState:
        """``state`` with the behaviours ``rows`` (newer than all before) appended."""
        ...

    def score(self, state: UserState | None, candidates: np.ndarray) -> np.ndarray:
        """Click probabilities (``float32``) of candidate rows for a user; ``state=None`` is a
        user without history (the cold-start path)."""
        ...
