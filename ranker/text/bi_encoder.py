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

    def encode_documents(self, documents: Sequence[str]) -> np.ndarray:
        """Unit document vectors, one row per document (stored and reused across queries by
        :func:`ranker.text.train.kfold.score_candidates`)."""
        if not documents:
            return np.empty((0, 0), dtype=np.float32)
        return self._embedder.embed(list(documents), kind="document", normalize=True).astype(
            np.float32
        )

    def score_encoded(self, query: str, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of documents given as :meth:`encode_documents` rows."""
        if not len(vectors):
            return np.empty(0, dtype=np.float32)
        q = self._embedder.embed([query], kind="query", normalize=True)
        return (np.stack(vectors).astype(np.float32) @ q[0].astype(np.float32)).ravel()

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        check_inputs(query, documents)
        if not documents:
            return np.empty(0, dtype=np.float32)
        return self.score_encoded(query, list(self.encode_documents(documents)))
