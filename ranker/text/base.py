"""The text reranker interface: ``score(query, documents) -> scores`` (higher is better).

Every kind (cross-encoder, late interaction, KNRM, LLM pointwise, the bi-encoder stand-in)
implements :class:`TextReranker`; callers never see which kind they hold. Scores are only
comparable within one query's documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from core.errors import InvalidRequest


@runtime_checkable
class TextReranker(Protocol):
    """Scores documents for a query. One float per document, in the documents' order."""

    #: The name it was loaded by (shown in responses and run files).
    name: str
    #: Its kind in :data:`ranker.text.registry.KINDS` (``cross-encoder``, ``knrm``, ...).
    kind: str

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """``float32`` scores of ``documents`` for ``query``; an empty list gives ``[]``."""
        ...


def check_inputs(query: str, documents: Sequence[str]) -> None:
    """The argument checks every kind shares: a text query and a list of text documents."""
    if not isinstance(query, str):
        raise InvalidRequest("The query must be a string")
    if isinstance(documents, str) or not all(isinstance(d, str) for d in documents):
        raise InvalidRequest("documents must be a list of strings")
