"""Contrastive training data: ``(query, positive, hard negatives)`` examples.

On disk an example is one JSON line::

    {"query": "...", "positive": "...", "negatives": ["...", "..."]}

Texts are stored raw: query instructions (``query_prefix``) and document prefixes belong to
the model's config and are added by the trainer, exactly as :class:`~embedder.llm.LLMEmbedder`
adds them at inference, so one data file serves every design and instruction.

:func:`examples_from_beir` builds examples from a BEIR split's qrels: one example per
(query, relevant document), documents written ``title + "\\n" + text`` as the ingest path
writes them, and hard negatives mined with Quarry's own BM25 (:mod:`indexer.lexical`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidRequest
from core.jsonl import iter_jsonl, write_jsonl

logger = logging.getLogger(__name__)

__all__ = [
    "TrainExample",
    "check_examples",
    "examples_from_beir",
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


def _mine(
    index: Any,
    query: str,
    relevant: set[int],
    n_docs: int,
    *,
    count: int,
    depth: int | None,
    rng: np.random.Generator,
) -> tuple[list[int], int]:
    """Rows of ``count`` non-relevant documents for ``query``; also how many were random fills.

    Without ``depth`` the ``count`` best-ranked non-relevant documents are taken; with it,
    ``count`` are drawn from the ``depth`` best (kept in rank order). Queries that share too
    few terms with the corpus are topped up with random non-relevant documents.
    """
    from indexer.lexical import search_lexical

    pool = depth or count
    # Over-fetch by the number of relevant documents, which are dropped from the ranking.
    _, ids = search_lexical([index], query, pool + len(relevant))
    ranked = [int(i) for i in ids if int(i) not in relevant][:pool]
    if depth is not None and len(ranked) > count:
        picked = np.sort(rng.choice(len(ranked), size=count, replace=False))
        ranked = [ranked[i] for i in picked]
    chosen = ranked[:count]
    need = count - len(chosen)
    if need > 0:
        taken = relevant | set(chosen)
        free = np.setdiff1d(np.arange(n_docs), np.fromiter(taken, dtype=np.int64))
        fill = rng.choice(free, size=min(need, free.size), replace=False)
        chosen.extend(int(i) for i in fill)
        return chosen, int(fill.size)
    return chosen, 0


def examples_from_beir(
    folder: str | Path,
    split: str = "train",
    *,
    hard_negatives: int = 1,
    depth: int | None = None,
    min_relevance: int = 1,
    seed: int = 0,
) -> list[TrainExample]:
    """Examples from BEIR ``folder``'s ``split``: one per (query, relevant document).

    A document is relevant when its grade is at least ``min_relevance``; judged non-relevant
    documents may serve as negatives. Each query gets ``hard_negatives`` non-relevant documents
    from Quarry's BM25 over the whole corpus: the best-ranked ones, or a seeded draw from the
    ``depth`` best when ``depth`` is given (less likely to hit unjudged relevant documents).
    Queries whose relevant documents are all missing from the corpus are skipped (logged).
    Deterministic for a given ``seed``.
    """
    from evaluation.loaders import load_beir
    from indexer.lexical import build_lexical

    if hard_negatives < 0:
        raise InvalidRequest(f"hard_negatives must be >= 0, got {hard_negatives}")
    if depth is not None and depth < hard_negatives:
        raise InvalidRequest(f"depth ({depth}) must be >= hard_negatives ({hard_negatives})")
    dataset = load_beir(Path(folder), split)
    docs = list(dataset.documents())  # title + "\n" + text, as ingest writes them
    texts = [d.text for d in docs]
    row_of = {d.id: i for i, d in enumerate(docs)}
    index = build_lexical(texts, np.arange(len(docs), dtype=np.int64)) if hard_negatives else None
    rng = np.random.default_rng(seed)

    examples: list[TrainExample] = []
    skipped = filled = 0
    for qid, query in dataset.queries.items():
        judged = dataset.qrels[qid]
        relevant = [row_of[d] for d, g in judged.items() if g >= min_relevance and d in row_of]
        if not relevant:
            skipped += 1
            continue
        negatives: list[int] = []
        if index is not None:
            negatives, fills = _mine(
                index,
                query,
                set(relevant),
                len(docs),
                count=hard_negatives,
                depth=depth,
                rng=rng,
            )
            filled += fills
        negative_texts = tuple(texts[i] for i in negatives)
        examples.extend(TrainExample(query, texts[r], negative_texts) for r in relevant)
    if not examples:
        raise InvalidRequest(
            f"{dataset.folder} split {split!r} yields no training pairs (no judged document "
            f"with relevance >= {min_relevance} in the corpus)"
        )
    logger.info(
        "built %d examples from %s/%s (%d queries, %d skipped without a relevant document in "
        "the corpus), %d hard negatives each, %d random fills",
        len(examples),
        dataset.name,
        split,
        len(dataset.queries),
        skipped,
        hard_negatives,
        filled,
    )
    return examples


def check_examples(examples: Sequence[TrainExample]) -> None:
    """Raise :class:`InvalidRequest` unless ``examples`` is a non-empty list of examples."""
    if not examples:
        raise InvalidRequest("No training examples")
    bad = next((i for i, e in enumerate(examples) if not isinstance(e, TrainExample)), None)
    if bad is not None:
        raise InvalidRequest(f"examples[{bad}] is a {type(examples[bad]).__name__}")
