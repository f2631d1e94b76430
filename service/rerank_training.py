"""What ``quarry train reranker`` does, end to end: data source → examples → training →
an honest measurement.

A :class:`DataSource` is a BEIR split (positives from its qrels, hard negatives mined with
BM25 over the corpus), a TREC reranking set (a candidates file with passage text plus qrels;
negatives are the judged non-relevant and unjudged candidates) or a JSON-lines file of
examples. :func:`train_from_source` then trains one model on all of its queries, or holds out
a seeded share of the queries (``holdout``) and reports the reranked first stage on exactly
those, or cross-validates over ``folds`` (TREC sets: :mod:`ranker.text.train.kfold`).
Reported numbers are nDCG@10 and MRR@10 of the first stage and of its reranking, written
beside the model (``heldout.json``, ``pooled.json``) with the runs they came from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.datasets import CandidateSet, load_beir, load_trec_candidates, load_trec_qrels
from core.errors import InvalidRequest
from embedder.train.data import TrainExample, read_examples
from ranker.text.registry import LoadOptions, load_reranker
from ranker.text.train.kfold import (
    POOLED_RUN,
    score_candidates,
    score_kfold,
    train_kfold,
    write_run,
)
from ranker.text.train.splits import holdout_split
from ranker.text.train.trainer import RerankTrainConfig, train_reranker

logger = logging.getLogger(__name__)

HELDOUT_REPORT = "heldout.json"
HELDOUT_RUN = "heldout.run.json"
POOLED_REPORT = "pooled.json"
#: BM25 candidates per held-out BEIR query that the trained model reranks.
BEIR_RERANK_DEPTH = 100


@dataclass
class DataSource:
    """Where examples come from: exactly one of ``beir``, ``candidates`` (+ ``qrels``) and
    ``data``. ``min_grade`` defaults to 1 for BEIR and 2 for TREC (DL's "highly relevant");
    ``negative_pool`` is how many BM25 negatives to mine per BEIR query (default 30), or how
    many of the best-ranked non-relevant candidates to keep per TREC query (``None``: all).
    BEIR negatives are drawn (seeded) from BM25's top ``negative_depth`` (default 100, the
    depth a reranker is applied at), not taken from its very top: the top non-relevant
    documents overlap the query more than most relevant ones, and a model trained only
    against them learns that lexical overlap means "not relevant" - which is wrong on the
    candidate lists it will rerank."""

    beir: Path | None = None
    split: str = "train"
    candidates: Path | None = None
    qrels: Path | None = None
    data: Path | None = None
    min_grade: int | None = None
    negative_pool: int | None = None
    negative_depth: int | None = None
    seed: int = 0
    _cands: CandidateSet | None = field(default=None, init=False, repr=False)
    _qrels: Mapping[str, Mapping[str, int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        given = [x for x in (self.beir, self.candidates, self.data) if x is not None]
        if len(given) != 1:
            raise InvalidRequest(
                "Give exactly one data source: --beir FOLDER, --candidates FILE with --qrels "
                "FILE, or --data FILE"
            )
        if (self.candidates is None) != (self.qrels is None):
            raise InvalidRequest("--candidates and --qrels go together")

    @property
    def grade(self) -> int:
        """The smallest grade that counts as relevant."""
        if self.min_grade is not None:
            return self.min_grade
        return 2 if self.candidates is not None else 1

    def candidate_set(self) -> CandidateSet:
        """The TREC candidates (loaded once)."""
        assert self.candidates is not None
        if self._cands is None:
            self._cands = load_trec_candidates(self.candidates)
        return self._cands

    def judgements(self) -> Mapping[str, Mapping[str, int]]:
        """The qrels of the source (loaded once)."""
        if self._qrels is None:
            if self.qrels is not None:
                self._qrels = load_trec_qrels(self.qrels)
            elif self.beir is not None:
                self._qrels = load_beir(self.beir, self.split).qrels
            else:
                raise InvalidRequest("A JSON-lines data file has no judgements to evaluate on")
        return self._qrels

    def query_ids(self) -> list[str]:
        """Every query the source can train on or be scored on (what splits divide)."""
        if self.candidates is not None:
            return list(self.candidate_set().candidates)
        if self.beir is not None:
            return list(load_beir(self.beir, self.split).queries)
        raise InvalidRequest("Query splits (--holdout, --folds) need --beir or --candidates")

    def examples(self, query_ids: Sequence[str] | None = None) -> list[TrainExample]:
        """Training examples (of ``query_ids`` only, when given)."""
        from ranker.text.train.examples import examples_from_candidates
        from service.training import examples_from_beir

        if self.data is not None:
            if query_ids is not None:
                raise InvalidRequest("A JSON-lines data file cannot be split by query")
            return read_examples(self.data)
        if self.beir is not None:
            pool = 30 if self.negative_pool is None else self.negative_pool
            depth = BEIR_RERANK_DEPTH if self.negative_depth is None else self.negative_depth
            return examples_from_beir(
                self.beir,
                self.split,
                hard_negatives=pool,
                depth=max(depth, pool),
                min_relevance=self.grade,
                seed=self.seed,
                query_ids=query_ids,
            )
        return examples_from_candidates(
            self.candidate_set(),
            self.judgements(),
            min_grade=self.grade,
            max_negatives=self.negative_pool,
            query_ids=query_ids,
        )

    def rerank_candidates(self, query_ids: Sequence[str]) -> CandidateSet:
        """First-stage candidates of ``query_ids``: the TREC file's, or BM25's top 100."""
        if self.candidates is not None:
            cands = self.candidate_set()
            return CandidateSet(
                cands.path,
                {q: cands.queries[q] for q in query_ids},
                {q: cands.candidates[q] for q in query_ids},
            )
        from service.training import candidates_from_beir

        assert self.beir is not None
        return candidates_from_beir(
            self.beir, self.split, depth=BEIR_RERANK_DEPTH, query_ids=query_ids
        )

    def describe(self) -> dict[str, Any]:
        """The source as recorded in ``training.json``."""

        def path(p: Path | None) -> str | None:
            return str(Path(p).resolve()) if p is not None else None

        return {
            "beir": path(self.beir),
            "split": self.split if self.beir is not None else None,
            "candidates": path(self.candidates),
            "qrels": path(self.qrels),
            "data": path(self.data),
            "min_grade": self.grade if self.data is None else None,
            "negative_pool": self.negative_pool,
            "negative_depth": self.negative_depth,
            "seed": self.seed,
        }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class Measure(Protocol):
    """Metrics of a reranked run and of its first stage over the judged queries."""

    def __call__(
        self,
        run: Mapping[str, Mapping[str, float]],
        first_stage: CandidateSet,
        qrels: Mapping[str, Mapping[str, int]],
        *,
        min_grade: int,
    ) -> dict[str, dict[str, float]]: ...


def train_from_source(
    config: RerankTrainConfig,
    source: DataSource,
    out: str | Path,
    *,
    holdout: float | None = None,
    folds: int | None = None,
    resume: bool = False,
    progress: bool = True,
    load_options: LoadOptions | None = None,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """Train on ``source`` into ``out`` (plainly, with a held-out share, or k-fold) and
    return a summary: what was trained, and the numbers ``measure`` (an evaluation adapter's
    metric function, e.g. :func:`evaluation.rerank.measure_reranking`) gives the held-out or
    pooled run, when one is given."""
    out = Path(out)
    if holdout is not None and folds is not None:
        raise InvalidRequest("Give --holdout or --folds, not both")
    metadata: dict[str, Any] = {"data": source.describe()}
    if folds is not None:
        if source.candidates is None:
            raise InvalidRequest("--folds cross-validates a TREC set: give --candidates/--qrels")
        kfold = train_kfold(
            config,
            source.candidate_set(),
            source.judgements(),
            out,
            folds=folds,
            min_grade=source.grade,
            max_negatives=source.negative_pool,
            resume=resume,
            progress=progress,
            metadata=metadata,
        )
        cands = source.candidate_set()
        run = score_kfold(out, cands, options=load_options, progress=progress)
        write_run(run, out / POOLED_RUN)
        pooled: dict[str, Any] = {"folds": folds, "final_losses": kfold.final_losses}
        if measure is not None:
            report = measure(run, cands, source.judgements(), min_grade=source.grade)
            _write_json(out / POOLED_REPORT, report)
            pooled["metrics"] = report
        return pooled
    held: list[str] = []
    train_ids: list[str] | None = None
    if holdout is not None:
        train_ids, held = holdout_split(source.query_ids(), holdout, seed=config.seed)
        metadata["heldout_queries"] = held
    examples = source.examples(train_ids)
    result = train_reranker(
        config, examples, out, resume=resume, progress=progress, metadata=metadata
    )
    summary: dict[str, Any] = {
        "examples": len(examples),
        "steps": result.step,
        "final_loss": result.final_loss,
    }
    if held and result.finished:
        cands = source.rerank_candidates(held)
        reranker = load_reranker(str(out), load_options)
        run = score_candidates(reranker, cands, progress=progress)
        write_run(run, out / HELDOUT_RUN)
        if measure is not None:
            report = measure(run, cands, source.judgements(), min_grade=source.grade)
            _write_json(out / HELDOUT_REPORT, {**report, "heldout_queries": held})
            summary["metrics"] = report
    return summary
