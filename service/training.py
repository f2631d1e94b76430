"""Training data built from datasets with Quarry's own engines, for embedders and rerankers.

- :func:`examples_from_beir`: BEIR qrels, with hard negatives mined by BM25
  (:mod:`indexer.lexical`) over the whole corpus;
- :func:`candidates_from_beir`: a BEIR split's BM25 top-k as such a candidate set, to rerank
  (and so evaluate a reranker on BEIR exactly as on TREC DL).

(Examples from a TREC-style reranking set need no index:
:func:`ranker.text.train.examples.examples_from_candidates`.) The first returns
:class:`~embedder.train.data.TrainExample` (query, positive, negatives), one per (query,
relevant document); both can be restricted to some queries (``query_ids``), which is how
held-out and cross-validation splits are kept apart.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import (
    Candidate,
    CandidateSet,
    load_beir,
)
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
    query_ids: Collection[str] | None = None,
) -> list[TrainExample]:
    """Examples from BEIR ``folder``'s ``split``: one per (query, relevant document).

    A document is relevant when its grade is at least ``min_relevance``; judged non-relevant
    documents may serve as negatives. Each query gets ``hard_negatives`` non-relevant documents
    from Quarry's BM25 over the whole corpus: the best-ranked ones, or a seeded draw from the
    ``depth`` best when ``depth`` is given (less likely to hit unjudged relevant documents).
    Queries whose relevant documents are all missing from the corpus are skipped (logged).
    With ``query_ids``, only those queries of the split are used (ids absent from the split are
    an error). Deterministic for a given ``seed``.
    """
    if hard_negatives < 0:
        raise InvalidRequest(f"hard_negatives must be >= 0, got {hard_negatives}")
    if depth is not None and depth < hard_negatives:
        raise InvalidRequest(f"depth ({depth}) must be >= hard_negatives ({hard_negatives})")
    dataset = load_beir(Path(folder), split)
    queries = dataset.queries
    if query_ids is not None:
        wanted = set(query_ids)
        unknown = sorted(wanted - set(queries))
        if unknown:
            raise InvalidRequest(
                f"{len(unknown)} query ids are not judged in split {split!r} of "
                f"{dataset.folder} (e.g. {', '.join(unknown[:5])})"
            )
        queries = {q: t for q, t in queries.items() if q in wanted}
    docs = list(dataset.documents())  # title + "\n" + text, as ingest writes them
    texts = [d.text for d in docs]
    row_of = {d.id: i for i, d in enumerate(docs)}
    index = build_lexical(texts, np.arange(len(docs), dtype=np.int64)) if hard_negatives else None
    rng = np.random.default_rng(seed)

    examples: list[TrainExample] = []
    skipped = filled = 0
    for qid, query in queries.items():
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
        len(queries),
        skipped,
        hard_negatives,
        filled,
    )
    return examples


def candidates_from_beir(
    folder: str | Path,
    split: str = "test",
    *,
    depth: int = 100,
    query_ids: Collection[str] | None = None,
) -> CandidateSet:
    """BM25's top ``depth`` documents (Quarry's BM25 over the whole corpus) for the judged
    queries of BEIR ``folder``'s ``split`` (or ``query_ids`` of them), with their text
    (title + newline + text, as ingest writes it), as a :class:`CandidateSet`."""
    if depth < 1:
        raise InvalidRequest(f"depth must be >= 1, got {depth}")
    dataset = load_beir(Path(folder), split)
    qids = list(dataset.queries) if query_ids is None else [str(q) for q in query_ids]
    unknown = sorted(set(qids) - set(dataset.queries))
    if unknown:
        raise InvalidRequest(
            f"{len(unknown)} query ids are not judged in split {split!r} of {dataset.folder} "
            f"(e.g. {', '.join(unknown[:5])})"
        )
    docs = list(dataset.documents())
    index = build_lexical([d.text for d in docs], np.arange(len(docs), dtype=np.int64))
    candidates: dict[str, list[Candidate]] = {}
    for qid in qids:
        scores, rows = search_lexical([index], dataset.queries[qid], depth)
        candidates[qid] = [
            Candidate(docid=docs[int(r)].id, score=float(s), rank=rank, content=docs[int(r)].text)
            for rank, (s, r) in enumerate(zip(scores, rows, strict=True), 1)
        ]
    return CandidateSet(
        path=Path(dataset.folder) / f"bm25-{split}-top{depth}",
        queries={q: dataset.queries[q] for q in qids},
        candidates=candidates,
    )
