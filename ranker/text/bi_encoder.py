"""The bi-encoder stand-in: cosine between the query and document embeddings of one of
Quarry's embedders (``embedder:all-MiniLM-L6-v2``). Zero-shot; the baseline the trained
kinds are measured against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedder import Embedder
from ranker.text.base import check_inputs


class BiEncoderReranker:
    """Cosine between the query embedding and each document embedding."""

    kind = "embedder"

    def __init__(self, embedder: Embedder, name: str) -> None:
        self._embedder = embedder
        self.name = name

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        check_inputs(query, documents)
        if not documents:
            return np.empty(0, dtype=np.float32)
        q = self._embedder.embed([query], kind="query", normalize=True)
        d = self._embedder.embed(list(documents), kind="document", normalize=True)
        return (d.astype(np.float32) @ q[0].astype(np.float32)).ravel()
