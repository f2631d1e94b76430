"""IR metrics through ``ranx`` (no hand-rolled metric code).

Metric names are ranx's, used verbatim everywhere (CLI, JSON, markdown):

- ``ndcg@10`` — nDCG with linear gains (trec_eval / Järvelin-Kekäläinen), cut at 10;
  ``ndcg_burges@10`` is the exponential-gain variant.
- ``mrr@10`` — reciprocal rank of the first relevant document within the top 10.
- ``recall@100`` — share of the query's relevant documents found in the top 100.
- ``map`` — average precision over the *whole* ranked list that was evaluated (ranx's
  ``map`` has no cut-off, i.e. MAP@depth where depth is the run length: ``--k 100`` for
  ``quarry eval retrieval``); ``map@100`` cuts explicitly.
- A ``-lN`` suffix sets the relevance threshold: ``map-l2`` and ``recall@1000-l2`` count only
  grades >= 2 as relevant (the TREC DL convention for binary measures). nDCG always uses the
  graded judgements.

Queries judged in the qrels but missing from the run (or with no results) score 0 in every
metric and count in the averages; queries in the run but not in the qrels are ignored —
ranx's ``make_comparable``. :attr:`EvalResult.coverage` counts both, so a run (or a
candidates file) covering only part of the judged queries shows in its results.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidRequest

logger = logging.getLogger(__name__)

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr@10", "map")

# ranx's own names (ranx.metrics.metric_switch); kept here to fail before ranx is imported.
RANX_METRICS: tuple[str, ...] = (
    "hits",
    "hit_rate",
    "precision",
    "recall",
    "f1",
    "r-precision",
    "mrr",
    "map",
    "dcg",
    "dcg_burges",
    "ndcg",
    "ndcg_burges",
    "bpref",
)
_METRIC_RE = re.compile(r"^(?P<base>[a-z_\-]+?)(?:@(?P<k>\d+))?(?:-l(?P<lvl>\d+))?$")

Run = Mapping[str, Mapping[str, float]]
"""A ranking: query id -> document id -> score (higher is better)."""


@dataclass
class EvalResult:
    """Mean metric values over the judged queries, every query's values, and the coverage.

    ``coverage`` (see :func:`query_coverage`): ``judged`` queries in the qrels, how many of
    them the run ranks (``evaluated``), the judged queries without any result
    (``judged_absent``, scored 0, their ids in ``judged_absent_ids``) and the run's
    ``unjudged`` queries (left out).
    """

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)

    @property
    def incomplete(self) -> bool:
        """True if some judged query has no result or some run query is unjudged."""
        return bool(self.coverage.get("judged_absent") or self.coverage.get("unjudged"))

    @property
    def metrics(self) -> list[str]:
        return list(self.aggregate)

    def metric(self, name: str) -> dict[str, float]:
        """``{query id: value}`` of one metric."""
        if name not in self.aggregate:
            raise InvalidRequest(
                f"Metric {name!r} was not computed. Computed: {', '.join(self.aggregate)}"
            )
        return {qid: values[name] for qid, values in self.per_query.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"aggregate": self.aggregate, "per_query": self.per_query, "coverage": self.coverage}


def query_coverage(
    qrels: Mapping[str, Mapping[str, int]], run: Run, *, unjudged: int | None = None
) -> dict[str, Any]:
    """How the run's queries meet the judged ones (see :class:`EvalResult`).

    A judged query whose ranking is absent or empty counts in ``judged_absent``. ``unjudged``
    overrides the count of run queries without judgements, for callers that dropped them
    before building the run (the reranking harness).
    """
    judged = [qid for qid, docs in qrels.items() if docs]
    absent = [qid for qid in judged if not run.get(qid)]
    extra = sum(1 for qid in run if not qrels.get(qid)) if unjudged is None else unjudged
    return {
        "judged": len(judged),
        "evaluated": len(judged) - len(absent),
        "judged_absent": len(absent),
        "judged_absent_ids": sorted(absent),
        "unjudged": int(extra),
    }


def coverage_note(coverage: Mapping[str, Any], *, unit: str = "results") -> str:
    """One line for people, e.g. ``2 of 3 judged queries have results; 1 without results
    (scored 0, counted in the means): 104; 1 unjudged query left out`` (at most 10 ids are
    listed). Empty when ``coverage`` is empty."""
    if not coverage:
        return ""
    absent = int(coverage.get("judged_absent", 0))
    unjudged = int(coverage.get("unjudged", 0))
    text = (
        f"{coverage.get('evaluated', 0)} of {coverage.get('judged', 0)} judged queries have {unit}"
    )
    if absent:
        ids = list(coverage.get("judged_absent_ids") or [])
        shown = ", ".join(map(str, ids[:10])) + (
            f", ... ({len(ids) - 10} more)" if len(ids) > 10 else ""
        )
        text += f"; {absent} without {unit} (scored 0, counted in the means)"
        if shown:
            text += f": {shown}"
    if unjudged:
        text += f"; {unjudged} unjudged {'query' if unjudged == 1 else 'queries'} left out"
    return text


def check_metric(name: str) -> str:
    """Return ``name`` if ranx understands it, else raise with the valid names."""
    m = _METRIC_RE.match(name)
    if m is None or m.group("base") not in RANX_METRICS:
        raise InvalidRequest(
            f"Invalid metric {name!r}. Valid metrics: {', '.join(RANX_METRICS)}, "
            "optionally with a cut-off and a relevance level (e.g. ndcg@10, recall@100, "
            "map-l2)"
        )
    return name


def rank_order_run(run: Run) -> dict[str, dict[str, float]]:
    """Replace scores by strictly decreasing ones that keep each query's dict order.

    ranx (like trec_eval) sorts by score, so tied scores (common after RRF or from BM25)
    would be re-ordered by an arbitrary tie-break; this keeps exactly the order the system
    returned.
    """
    return {
        qid: {docid: float(len(docs) - i) for i, docid in enumerate(docs)}
        for qid, docs in run.items()
    }


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    preserve_order: bool = False,
) -> EvalResult:
    """Evaluate ``run`` against ``qrels`` with ranx.

    ``preserve_order=True`` evaluates each query's documents in dict order (the order the
    system returned them) instead of by score; see :func:`rank_order_run`.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = [check_metric(m) for m in dict.fromkeys(metrics)]
    if not metrics:
        raise InvalidRequest("No metrics to compute")
    judged = {qid: dict(docs) for qid, docs in qrels.items() if docs}
    if not judged:
        raise InvalidRequest("The qrels hold no judged query")
    source = rank_order_run(run) if preserve_order else run
    coverage = query_coverage(judged, run)
    # Only judged queries; an absent or empty ranking becomes ranx's empty result (0 in
    # every metric, via make_comparable below).
    restricted = {qid: dict(source[qid]) for qid in judged if source.get(qid)}
    missing = len(judged) - len(restricted)
    if missing:
        logger.info("%d of %d judged queries have no results; they score 0", missing, len(judged))
    if not restricted:  # ranx cannot build an empty Run; every metric of nothing is 0
        return EvalResult(
            aggregate=dict.fromkeys(metrics, 0.0),
            per_query={qid: dict.fromkeys(metrics, 0.0) for qid in judged},
            coverage=coverage,
        )

    import ranx  # numba-compiled, slow to import: only when evaluating

    ranx_qrels = ranx.Qrels(judged)
    ranx_run = ranx.Run(restricted).make_comparable(ranx_qrels)
    with warnings.catch_warnings():
        # numba's uint64 -> int64 cast notice inside ranx; harmless and noisy.
        warnings.filterwarnings("ignore", message=".*unsafe cast.*")
        ranx.evaluate(ranx_qrels, ranx_run, list(metrics), save_results_in_run=True)
    per_query: dict[str, dict[str, float]] = {qid: {} for qid in judged}
    for m in metrics:
        for qid, value in ranx_run.scores[m].items():
            per_query[qid][m] = float(value)
    aggregate = {m: float(ranx_run.mean_scores[m]) for m in metrics}
    return EvalResult(aggregate=aggregate, per_query=per_query, coverage=coverage)
