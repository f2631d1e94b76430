"""Reranking evaluation on fixed candidate lists (TREC DL top-100 files).

A reranker scores each (query, candidate) pair; the harness sorts every query's candidates by
that score (ties keep the first-stage order) and evaluates the new order with ranx. With a
depth N only each query's top N are reranked; the candidates below keep their first-stage
order under the reranked block, so measures at the full list length (Recall@100) do not
change with N.

Rerankers come from a registry, ``RERANKERS``: a name -> factory mapping, addressed on the
command line as ``name`` or ``name:argument``:

- ``none`` keeps the candidates' own scores: it reproduces the first stage (BM25 0.5058,
  SPLADE++ 0.7308 nDCG@10 on DL19);
- ``embedder[:model]`` reorders by cosine between the query and passage embeddings of one of
  Quarry's embedders (default: the configured default model);
- any other name is a text reranker of :mod:`ranker.text` (a packaged name such as
  ``quarry-li-cranfield`` or ``smollm2-likelihood``, or a reranker directory), loaded with
  ``QUARRY_RERANK__*``'s device and batching settings.

More plug in with :func:`register_reranker`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tqdm import tqdm

from core.datasets import Candidate, CandidateSet
from core.errors import InvalidRequest
from evaluation.metrics import EvalResult, coverage_note, evaluate_run, query_coverage
from evaluation.retrieval import Ranking, latency_stats

if TYPE_CHECKING:
    from core.settings import Settings
    from embedder import Embedder
    from ranker.text.base import TextReranker

logger = logging.getLogger(__name__)

# TREC DL conventions: graded nDCG, binary measures count grades >= 2 as relevant.
RERANK_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10-l2", "map-l2", "recall@100-l2")


class Reranker(Protocol):
    """Scores a query's candidates; higher is better. One score per candidate, in order."""

    name: str

    def score(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray: ...


RerankerFactory = Callable[[str | None, "Settings"], Reranker]
"""``factory(argument, settings)``; the argument is what follows ``name:`` (or None)."""


class FirstStage:
    """The candidates' own first-stage scores: evaluates the candidate lists as given."""

    name = "none"

    def score(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.array([c.score for c in candidates], dtype=np.float64)


class EmbedderReranker:
    """Cosine between the query embedding and each passage embedding (a bi-encoder)."""

    def __init__(self, embedder: Embedder, name: str | None = None) -> None:
        self._embedder = embedder
        self.name = name or f"embedder:{getattr(embedder, 'name', 'model')}"

    def score(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        if not candidates:
            return np.empty(0, dtype=np.float64)
        q = self._embedder.embed([query], kind="query", normalize=True)
        p = self._embedder.embed([c.content for c in candidates], kind="document", normalize=True)
        return (p.astype(np.float64) @ q[0].astype(np.float64)).ravel()


def _first_stage(arg: str | None, settings: Settings) -> Reranker:
    if arg:
        raise InvalidRequest("The 'none' reranker takes no argument")
    return FirstStage()


def _embedder(arg: str | None, settings: Settings) -> Reranker:
    from service import build

    model = arg or settings.embedder.default_model
    # The container is lazy: its embedder pool needs no database or broker.
    pool = build(settings, check_schema=False).embedders
    return EmbedderReranker(pool.get(model), name=f"embedder:{model}")


RERANKERS: dict[str, RerankerFactory] = {"none": _first_stage, "embedder": _embedder}
_USAGE = {"none": "none", "embedder": "embedder[:MODEL]"}


def register_reranker(name: str, factory: RerankerFactory, *, usage: str | None = None) -> None:
    """Make ``name[:arg]`` available to :func:`make_reranker` and ``quarry eval rerank``."""
    if not name or ":" in name:
        raise ValueError(f"Invalid reranker name {name!r}")
    RERANKERS[name] = factory
    _USAGE[name] = usage or name


class TextRerankerAdapter:
    """A :mod:`ranker.text` reranker (it scores texts) over candidate passages."""

    def __init__(self, reranker: TextReranker) -> None:
        self._reranker = reranker
        self.name = reranker.name

    def score(self, query: str, candidates: Sequence[Candidate]) -> np.ndarray:
        scores = self._reranker.score(query, [c.content for c in candidates])
        return np.asarray(scores, dtype=np.float64).reshape(-1)


def make_reranker(spec: str, settings: Settings) -> Reranker:
    """Build the reranker ``spec`` names (``none``, ``embedder:all-MiniLM-L6-v2``, a text
    reranker's name or directory, ...)."""
    from ranker.text.registry import PACKAGED_RERANKERS, LoadOptions, load_reranker, valid_names

    name, _, arg = spec.partition(":")
    factory = RERANKERS.get(name.strip())
    if factory is not None:
        return factory(arg.strip() or None, settings)
    if spec not in PACKAGED_RERANKERS and not Path(spec).expanduser().is_dir():
        valid = [_USAGE.get(n, n) for n in RERANKERS]
        valid += [n for n in valid_names() if not n.startswith("embedder:")]
        raise InvalidRequest(f"Unknown reranker {spec!r}. Valid rerankers: {', '.join(valid)}")
    return TextRerankerAdapter(load_reranker(spec, LoadOptions.from_settings(settings)))


def _scores_below(floor: float, n: int) -> np.ndarray:
    """``n`` strictly decreasing finite floats, all strictly below ``floor``."""
    out = floor - np.arange(1, n + 1, dtype=np.float64)
    prev = floor
    for i in range(n):  # only where floor - i rounds back (|floor| beyond 2**53)
        if not out[i] < prev:
            out[i] = np.nextafter(prev, -np.inf)
        prev = out[i]
    return out


def rerank_candidates(
    reranker: Reranker,
    candidates: CandidateSet,
    *,
    query_ids: Sequence[str] | None = None,
    depth: int | None = None,
    show_progress: bool = True,
) -> tuple[Ranking, list[float]]:
    """Rerank each query's top-``depth`` candidates; returns the ranking and ms per query.

    The reranked block comes first, sorted by the reranker's score (ties keep the first-stage
    order). Candidates below ``depth`` follow in their first-stage order, with scores made
    strictly lower than the reranked block's and strictly decreasing, so the full list is
    kept (recall at the list's length does not change) and the scores alone give the order.
    ``depth=None`` reranks every candidate.
    """
    if depth is not None and depth < 1:
        raise InvalidRequest("depth must be at least 1")
    qids = list(query_ids) if query_ids is not None else list(candidates.candidates)
    run: Ranking = {}
    latencies: list[float] = []
    for qid in tqdm(
        qids, unit="query", desc=f"reranking ({reranker.name})", disable=not show_progress
    ):
        all_cands = candidates.candidates.get(qid, [])
        cut = len(all_cands) if depth is None else depth
        cands, tail = all_cands[:cut], all_cands[cut:]
        t0 = time.perf_counter()
        scores = np.asarray(reranker.score(candidates.queries[qid], cands), dtype=np.float64)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if scores.shape != (len(cands),):
            raise InvalidRequest(
                f"Reranker {reranker.name} returned {scores.shape} scores for {len(cands)} "
                "candidates"
            )
        if not np.isfinite(scores).all():
            raise InvalidRequest(f"Reranker {reranker.name} returned a non-finite score")
        order = np.argsort(-scores, kind="stable")  # ties keep the first-stage order
        ranked: dict[str, float] = {}
        for i in order:
            ranked.setdefault(cands[i].docid, float(scores[i]))
        rest = [c.docid for c in tail if c.docid not in ranked]
        rest = list(dict.fromkeys(rest))  # a repeated docid keeps its first place
        if rest:
            floor = float(scores.min()) if scores.size else 0.0
            ranked.update(zip(rest, _scores_below(floor, len(rest)).tolist(), strict=True))
        run[qid] = ranked
    return run, latencies


def run_rerank_eval(
    candidates: CandidateSet,
    qrels: Mapping[str, Mapping[str, int]],
    reranker: Reranker,
    *,
    depth: int | None = None,
    metrics: Sequence[str] = RERANK_METRICS,
    show_progress: bool = True,
) -> tuple[EvalResult, Ranking, dict[str, float]]:
    """Rerank the judged queries' candidates with ``reranker`` and evaluate the new order.

    Each query's top ``depth`` candidates are reranked and the rest kept below them (see
    :func:`rerank_candidates`). Judged queries without candidates score 0 and count in the
    means; candidates of unjudged queries are dropped. Both are counted in
    ``result.coverage`` and logged as a warning.
    """
    judged = [qid for qid in candidates.candidates if qrels.get(qid)]
    if not judged:
        raise InvalidRequest(
            f"No query of {candidates.path.name} is judged in the qrels: wrong qrels file?"
        )
    skipped = len(candidates.candidates) - len(judged)
    t0 = time.perf_counter()
    run, latencies = rerank_candidates(
        reranker, candidates, query_ids=judged, depth=depth, show_progress=show_progress
    )
    rerank_s = time.perf_counter() - t0
    result = evaluate_run(qrels, run, metrics, preserve_order=True)
    result.coverage = query_coverage(qrels, run, unjudged=skipped)
    if result.incomplete:
        logger.warning(
            "%s covers part of the qrels: %s",
            candidates.path.name,
            coverage_note(result.coverage, unit="candidates"),
        )
    timings: dict[str, float] = {
        "queries": len(judged),
        "candidates": sum(len(docs) for docs in run.values()),
        "reranked": sum(len(candidates.candidates.get(qid, [])[:depth]) for qid in judged),
        "rerank_s": round(rerank_s, 3),
        **latency_stats(latencies),
    }
    return result, run, timings


def measure_reranking(
    run: Mapping[str, Mapping[str, float]],
    first_stage: CandidateSet,
    qrels: Mapping[str, Mapping[str, int]],
    *,
    min_grade: int,
) -> dict[str, dict[str, float]]:
    """nDCG@10 and MRR@10 of the first stage and of ``run`` over ``first_stage``'s queries."""
    level = "" if min_grade <= 1 else f"-l{min_grade}"
    metrics = ("ndcg@10", f"mrr@10{level}")
    judged = {q: dict(qrels[q]) for q in first_stage.candidates if q in qrels}
    if not judged:
        raise InvalidRequest("None of the scored queries is judged")
    before = {
        q: {c.docid: c.score for c in sorted(hits, key=lambda c: c.rank)}
        for q, hits in first_stage.candidates.items()
    }
    out = {}
    for name, ranking in (("first_stage", before), ("reranked", run)):
        result = evaluate_run(judged, ranking, metrics, preserve_order=True)
        out[name] = {m: round(v, 4) for m, v in result.aggregate.items()}
    out["queries"] = {"judged": float(len(judged))}
    return out
