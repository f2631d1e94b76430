"""Contrastive training data: ``(query, positive, hard negatives)`` examples.

On disk an example is one JSON line::

    {"query": "...", "positive": "...", "negatives": ["...", "..."]}

Texts are stored raw: query instructions (``query_prefix``) and document prefixes belong to
the model's config and are added by the trainer, exactly as :class:`~embedder.llm.LLMEmbedder`
adds them at inference, so one data file serves every design and instruction.

:func:`service.training.examples_from_beir` builds examples from a BEIR split's qrels,
with hard negatives mined by Quarry's own BM25.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidRequest
from core.jsonl import iter_jsonl, write_jsonl

logger = logging.getLogger(__name__)

#: How ``--instruction`` becomes the query prefix (the E5-Mistral / NV-Embed layout).
INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "

__all__ = [
    "TrainExample",
    "check_examples",
    "read_examples",
    "write_examples",
]


@dataclass(frozen=True)
class TrainExample:
    """One training example: a query, a relevant document and non-relevant (hard) documents."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-line form."""
        return {"query": self.query, "positive": self.positive, "negatives": list(self.negatives)}


def _example(record: Any, where: str) -> TrainExample:
    if not isinstance(record, dict):
        raise InvalidRequest(f'{where}: expected an object {{"query", "positive", "negatives"}}')
    query, positive = record.get("query"), record.get("positive")
    negatives = record.get("negatives", [])
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest(f"{where}: 'query' must be a non-empty string")
    if not isinstance(positive, str) or not positive.strip():
        raise InvalidRequest(f"{where}: 'positive' must be a non-empty string")
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise InvalidRequest(f"{where}: 'negatives' must be a list of strings")
    return TrainExample(query, positive, tuple(negatives))


def read_examples(path: str | Path) -> list[TrainExample]:
    """Read a JSON-lines file (gzip too) of examples; errors name the file and line."""
    path = Path(path)
    examples = [
        _example(record, f"{path}:{lineno}")
        for lineno, record in iter_jsonl(path, what="Training data")
    ]
    if not examples:
        raise InvalidRequest(f"{path} holds no training examples")
    return examples


def write_examples(examples: Iterable[TrainExample], path: str | Path) -> Path:
    """Write ``examples`` as JSON lines (gzip if ``path`` ends in ``.gz``); returns the path."""
    return write_jsonl((example.to_dict() for example in examples), path)


def check_examples(examples: Sequence[TrainExample]) -> None:
    """Raise :class:`InvalidRequest` unless ``examples`` is a non-empty list of examples."""
    if not examples:
        raise InvalidRequest("No training examples")
    bad = next((i for i, e in enumerate(examples) if not isinstance(e, TrainExample)), None)
    if bad is not None:
        raise InvalidRequest(f"examples[{bad}] is a {type(examples[bad]).__name__}")
