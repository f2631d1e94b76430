"""IR evaluation: dataset loaders, ranx metrics, paired significance tests, reports.

``quarry eval`` (:mod:`cli.eval`) drives it. Importing this package is cheap: ranx,
scipy, matplotlib and the service's ingest/search modules are imported only when used, and
the public names below are resolved on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from core.datasets import (
        BeirDataset,
        Candidate,
        CandidateSet,
        load_beir,
        load_beir_qrels,
        load_run,
        load_trec_candidates,
        load_trec_qrels,
        run_format,
    )
    from evaluation.metrics import (
        DEFAULT_METRICS,
        EvalResult,
        check_metric,
        evaluate_run,
        query_coverage,
    )
    from evaluation.report import (
        comparison_figure,
        load_run_record,
        markdown_report,
        metrics_table,
        plot_comparison,
        write_comparison_report,
        write_json,
    )
    from evaluation.rerank import (
        RERANK_METRICS,
        RERANKERS,
        EmbedderReranker,
        Reranker,
        make_reranker,
        register_reranker,
        run_rerank_eval,
    )
    from evaluation.retrieval import (
        MODES,
        run_retrieval_eval,
        search_queries,
    )
    from evaluation.significance import (
        Comparison,
        PairComparison,
        compare,
        holm,
    )

# Public name -> defining module, imported on first access (PEP 562) so that importing
# the package (``cli.main`` does, for ``quarry eval``) stays cheap.
_EXPORTS: dict[str, str] = {
    "BeirDataset": "core.datasets",
    "Candidate": "core.datasets",
    "CandidateSet": "core.datasets",
    "load_beir": "core.datasets",
    "load_beir_qrels": "core.datasets",
    "load_run": "core.datasets",
    "load_trec_candidates": "core.datasets",
    "load_trec_qrels": "core.datasets",
    "run_format": "core.datasets",
    "DEFAULT_METRICS": "evaluation.metrics",
    "EvalResult": "evaluation.metrics",
    "check_metric": "evaluation.metrics",
    "evaluate_run": "evaluation.metrics",
    "query_coverage": "evaluation.metrics",
    "comparison_figure": "evaluation.report",
    "load_run_record": "evaluation.report",
    "markdown_report": "evaluation.report",
    "metrics_table": "evaluation.report",
    "plot_comparison": "evaluation.report",
    "write_comparison_report": "evaluation.report",
    "write_json": "evaluation.report",
    "RERANK_METRICS": "evaluation.rerank",
    "RERANKERS": "evaluation.rerank",
    "EmbedderReranker": "evaluation.rerank",
    "Reranker": "evaluation.rerank",
    "make_reranker": "evaluation.rerank",
    "register_reranker": "evaluation.rerank",
    "run_rerank_eval": "evaluation.rerank",
    "MODES": "evaluation.retrieval",
    "run_retrieval_eval": "evaluation.retrieval",
    "search_queries": "evaluation.retrieval",
    "Comparison": "evaluation.significance",
    "PairComparison": "evaluation.significance",
    "compare": "evaluation.significance",
    "holm": "evaluation.significance",
}

__all__ = [
    "DEFAULT_METRICS",
    "MODES",
    "RERANKERS",
    "RERANK_METRICS",
    "BeirDataset",
    "Candidate",
    "CandidateSet",
    "Comparison",
    "EmbedderReranker",
    "EvalResult",
    "PairComparison",
    "Reranker",
    "check_metric",
    "compare",
    "comparison_figure",
    "evaluate_run",
    "holm",
    "load_beir",
    "load_beir_qrels",
    "load_run",
    "load_run_record",
    "load_trec_candidates",
    "load_trec_qrels",
    "make_reranker",
    "markdown_report",
    "metrics_table",
    "plot_comparison",
    "query_coverage",
    "register_reranker",
    "run_format",
    "run_rerank_eval",
    "run_retrieval_eval",
    "search_queries",
    "write_comparison_report",
    "write_json",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
