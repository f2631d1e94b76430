"""Training data built from datasets with Quarry's own engines: BEIR qrels with hard
negatives mined by BM25 (:mod:`indexer.lexical`). Embedders use it today; rerankers will
take their examples from here too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import load_beir
from core.errors import InvalidRequest
from embedder.train.data import TrainExample
from indexer.lexical import build_lexical, search_lexical

logger = logging.getLogger(__name__)


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
