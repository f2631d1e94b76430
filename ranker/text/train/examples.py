"""Training examples from a reranking set: first-stage candidates (with passage text) and
their judgements. Pure data, no index: the k-fold trainer builds each fold's examples here."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path

from core.datasets import CandidateSet, load_trec_candidates, load_trec_qrels
from core.errors import InvalidRequest
from embedder.train.data import TrainExample

logger = logging.getLogger(__name__)


def examples_from_candidates(
    candidates: str | Path | CandidateSet,
    qrels: str | Path | Mapping[str, Mapping[str, int]],
    *,
    min_grade: int = 2,
    max_negatives: int | None = None,
    query_ids: Collection[str] | None = None,
) -> list[TrainExample]:
    """Examples from a reranking set: first-stage candidates (with passage text) and qrels.

    For each judged query (restricted to ``query_ids`` when given), every candidate with a
    grade of at least ``min_grade`` (2 for TREC DL, where 1 is "related") is a positive, and
    the negatives are its candidates judged non-relevant (grade 0) or left unjudged, in the
    first stage's rank order (``max_negatives`` keeps the best-ranked ones, the hardest).
    Candidates graded between 1 and ``min_grade`` - 1 are neither: partially relevant
    passages would be wrong to push down. Relevant passages that the first stage did not
    retrieve have no text here and are skipped. ``candidates`` and ``qrels`` are loaded
    objects or paths (a rank_llm candidates JSON, TREC qrels).
    """
    if min_grade < 1:
        raise InvalidRequest(f"min_grade must be >= 1, got {min_grade}")
    if max_negatives is not None and max_negatives < 0:
        raise InvalidRequest(f"max_negatives must be >= 0, got {max_negatives}")
    cands = (
        candidates
        if isinstance(candidates, CandidateSet)
        else load_trec_candidates(Path(candidates))
    )
    judgements = qrels if isinstance(qrels, Mapping) else load_trec_qrels(Path(qrels))
    wanted = list(cands.candidates) if query_ids is None else list(query_ids)
    unknown = sorted(set(wanted) - set(cands.candidates))
    if unknown:
        raise InvalidRequest(
            f"{len(unknown)} query ids have no candidates in {cands.path.name} "
            f"(e.g. {', '.join(unknown[:5])})"
        )
    examples: list[TrainExample] = []
    unjudged = without_positive = 0
    for qid in wanted:
        judged = judgements.get(qid)
        if not judged:
            unjudged += 1
            continue
        hits = cands.candidates[qid]
        positives = [h.content for h in hits if judged.get(h.docid, 0) >= min_grade]
        negatives = tuple(h.content for h in hits if judged.get(h.docid, 0) == 0)
        if max_negatives is not None:
            negatives = negatives[:max_negatives]
        if not positives:
            without_positive += 1
            continue
        query = cands.queries[qid]
        examples.extend(TrainExample(query, p, negatives) for p in positives)
    if not examples:
        raise InvalidRequest(
            f"{cands.path.name} yields no training pairs: no judged candidate with grade >= "
            f"{min_grade} among the {len(wanted)} queries"
        )
    logger.info(
        "built %d examples from %s: %d queries, %d unjudged and %d without a candidate of "
        "grade >= %d skipped",
        len(examples),
        cands.name,
        len(wanted),
        unjudged,
        without_positive,
        min_grade,
    )
    return examples
