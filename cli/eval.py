"""``quarry eval``: retrieval and reranking evaluation, scoring of precomputed runs, and run
comparison with significance tests.

Registered in :mod:`cli.main` as ``app.add_typer(cli.eval.app, name="eval")``. Importing
this module is cheap (typer only); everything heavy is imported inside the commands, and so
is :mod:`cli.main` itself, which imports this module.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.support import friendly, setup_cli

if TYPE_CHECKING:
    from evaluation.metrics import EvalResult

app = typer.Typer(
    help="Evaluate retrieval, reranking and precomputed runs; compare runs with significance "
    "tests.",
    no_args_is_help=True,
)

logger = logging.getLogger("quarry.cli.eval")

RUNS_DIR = Path("evaluation") / "runs"


def _command_line() -> str:
    return shlex.join(["quarry", *sys.argv[1:]]) if sys.argv else "quarry"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _save(
    out: Path,
    name: str,
    *,
    kind: str,
    config: dict[str, Any],
    result: EvalResult,
    run: dict[str, dict[str, float]],
    timings: dict[str, Any],
) -> Path:
    from evaluation.report import run_record, write_json

    run_path = write_json(out / f"{name}.run.json", run)
    record = run_record(
        name=name,
        kind=kind,
        config=config,
        aggregate=result.aggregate,
        per_query=result.per_query,
        timings=timings,
        command=_command_line(),
        run_file=run_path.name,
        coverage=result.coverage,
    )
    return write_json(out / f"{name}.json", record)


def _print_result(
    name: str, result: EvalResult, timings: dict[str, Any], path: Path, *, unit: str = "results"
) -> None:
    from evaluation.metrics import coverage_note
    from evaluation.report import metrics_table

    extra = {}
    if "latency_median_ms" in timings:
        extra = {
            name: {
                "p50 ms": f"{timings['latency_median_ms']:.1f}",
                "p95 ms": f"{timings['latency_p95_ms']:.1f}",
            }
        }
    typer.echo(metrics_table({name: result.aggregate}, extra=extra))
    typer.echo(f"{len(result.per_query)} queries; results in {path}")
    if result.incomplete:
        typer.echo("Coverage: " + coverage_note(result.coverage, unit=unit))


def _warn_coverage(source: str, result: EvalResult, *, unit: str) -> None:
    """A WARNING when ``source`` misses judged queries or holds unjudged ones."""
    from evaluation.metrics import coverage_note

    if result.incomplete:
        logger.warning(
            "%s covers part of the qrels: %s", source, coverage_note(result.coverage, unit=unit)
        )


_DATA_SUFFIXES = (".gz", ".json", ".run", ".trec", ".txt", ".tsv")

# Keys ``quarry eval run`` writes into a record's config itself; --config/--meta may not.
_RUN_CONFIG_KEYS = frozenset({"dataset", "run", "metrics"})


def _bare_stem(path: Path) -> str:
    """The file name without its data suffixes: ``a.run.json.gz`` -> ``a``."""
    name = Path(path).name
    while True:
        for suffix in _DATA_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        else:
            return name


def _config_value(text: str) -> Any:
    """A JSON number, ``true``/``false`` or ``null`` written exactly as JSON writes it, else text.

    ``steps=1000`` stores 1000 and ``fp16=true`` True, while ``version=4.40`` or ``lr=1e-3``
    stay text, so nothing is silently rewritten.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    if (value is None or isinstance(value, bool | int | float)) and json.dumps(value) == text:
        return value
    return text


def _load_meta(path: Path) -> dict[str, Any]:
    """The JSON object of a ``--meta`` file."""
    from core.datasets import read_json
    from core.errors import InvalidRequest

    loaded = read_json(path, "Meta")
    if not isinstance(loaded, dict):
        raise InvalidRequest(f"{path}: expected a JSON object, got {type(loaded).__name__}")
    return loaded


def _extra_config(meta: Path | None, pairs: list[str]) -> dict[str, Any]:
    """The ``--meta`` file's JSON object, then the ``--config KEY=VALUE`` pairs over it."""
    from core.errors import InvalidRequest

    extra = _load_meta(meta) if meta is not None else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidRequest(f"--config expects KEY=VALUE, got {pair!r}")
        extra[key] = _config_value(value)
    clash = sorted(_RUN_CONFIG_KEYS & set(extra))
    if clash:
        raise InvalidRequest(
            f"--config/--meta cannot set {', '.join(map(repr, clash))}: "
            "quarry eval run records those itself"
        )
    return extra


MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        help="ranx metric name, repeatable (ndcg@10, recall@100, mrr@10, map, map-l2, ...)",
    ),
]
OutOpt = Annotated[Path | None, typer.Option(help="Output folder")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars")]


@app.command()
@friendly
def retrieval(
    data: Annotated[Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")],
    split: Annotated[str, typer.Option(help="Qrels split (qrels/<split>.tsv)")] = "test",
    collection: Annotated[
        str | None, typer.Option(help="Collection to (re)use; default: the folder's name")
    ] = None,
    mode: Annotated[str, typer.Option(help="dense, lexical (BM25) or hybrid (RRF)")] = "dense",
    k: Annotated[int, typer.Option("--k", min=1, help="Documents retrieved per query")] = 100,
    rrf_k: Annotated[int, typer.Option(min=1, help="RRF constant (hybrid)")] = 60,
    embedder: Annotated[
        str | None, typer.Option(help="Model of a new collection (default: settings)")
    ] = None,
    index_spec: Annotated[str, typer.Option(help="FAISS factory string (new collection)")] = "Flat",
    bm25_k1: Annotated[
        float | None,
        typer.Option(
            "--bm25-k1",
            min=0.0,
            help="BM25 k1 of a new collection (default 0.9); an existing one must match",
        ),
    ] = None,
    bm25_b: Annotated[
        float | None,
        typer.Option(
            "--bm25-b",
            min=0.0,
            max=1.0,
            help="BM25 b of a new collection (default 0.4); an existing one must match",
        ),
    ] = None,
    metric: MetricOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder; default evaluation/runs/<dataset>")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name; default <collection>-<mode>")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per ingest job")] = 1000,
    progress: ProgressOpt = True,
    migrate: Annotated[
        bool | None,
        typer.Option(help="Migrate the database first (default: only the embedded SQLite one)"),
    ] = None,
) -> None:
    """Index a BEIR corpus through the ingest path, search every query, report metrics."""
    from core.datasets import load_beir
    from evaluation.metrics import DEFAULT_METRICS, check_metric
    from evaluation.retrieval import check_mode, collection_config, run_retrieval_eval

    checked_mode = check_mode(mode)
    metrics = [check_metric(m) for m in (metric or DEFAULT_METRICS)]
    dataset = load_beir(data, split)
    coll_name = collection or dataset.name
    run_name = _slug(name or f"{coll_name}-{checked_mode}")
    out_dir = out or RUNS_DIR / _slug(dataset.name)

    settings = setup_cli()
    from core import migrate as migrations
    from service import build

    if migrate if migrate is not None else settings.is_embedded:
        migrations.upgrade(settings.resolved_database_url)
    with build(settings) as c:
        result, run, timings = run_retrieval_eval(
            c,
            dataset,
            collection=coll_name,
            mode=checked_mode,
            k=k,
            rrf_k=rrf_k,
            embedder=embedder,
            index_spec=index_spec,
            bm25_k1=bm25_k1,
            bm25_b=bm25_b,
            batch_size=batch_size,
            metrics=metrics,
            show_progress=progress,
        )
        coll_info = collection_config(c, coll_name)
    config = {
        "dataset": {
            "name": dataset.name,
            "folder": str(Path(data).resolve()),
            "split": split,
            "queries": len(dataset.queries),
            "judgements": sum(len(v) for v in dataset.qrels.values()),
        },
        "mode": checked_mode,
        "k": k,
        "rrf_k": rrf_k,
        **coll_info,
        "metrics": metrics,
    }
    path = _save(
        out_dir,
        run_name,
        kind="retrieval",
        config=config,
        result=result,
        run=run,
        timings=timings,
    )
    _print_result(run_name, result, timings, path)


@app.command()
@friendly
def rerank(
    candidates: Annotated[
        Path,
        typer.Option(help="Candidates JSON: [{query, hits: [{qid, docid, rank, score, content}]}]"),
    ],
    qrels: Annotated[Path, typer.Option(help="TREC qrels: 'qid Q0 docid rel' lines")],
    reranker: Annotated[
        str,
        typer.Option(
            help="none (candidates as given), embedder[:MODEL], or a text reranker: a packaged "
            "name (quarry-li-cranfield, smollm2-pointwise, smollm2-likelihood) or a directory"
        ),
    ] = "none",
    depth: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rerank only each query's top DEPTH; the candidates below keep their "
            "first-stage order under them",
        ),
    ] = None,
    metric: MetricOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder; default evaluation/runs/<candidates>")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Run name; default <candidates>-<reranker>, -d<DEPTH> appended"),
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Rerank fixed candidate lists (TREC DL top-100) and report metrics against qrels."""
    from core.datasets import load_trec_candidates, load_trec_qrels
    from evaluation.metrics import check_metric
    from evaluation.rerank import RERANK_METRICS, make_reranker, run_rerank_eval

    metrics = [check_metric(m) for m in (metric or RERANK_METRICS)]
    cands = load_trec_candidates(candidates)
    judgements = load_trec_qrels(qrels)
    settings = setup_cli()
    model = make_reranker(reranker, settings)
    result, run, timings = run_rerank_eval(
        cands, judgements, model, depth=depth, metrics=metrics, show_progress=progress
    )
    default_name = f"{cands.name}-{model.name}" + (f"-d{depth}" if depth is not None else "")
    run_name = _slug(name or default_name)
    config = {
        "candidates": str(Path(candidates).resolve()),
        "qrels": str(Path(qrels).resolve()),
        "reranker": model.name,
        "depth": depth,
        "metrics": metrics,
    }
    path = _save(
        out or RUNS_DIR / _slug(cands.name),
        run_name,
        kind="rerank",
        config=config,
        result=result,
        run=run,
        timings=timings,
    )
    _print_result(run_name, result, timings, path, unit="candidates")


@app.command("run")
@friendly
def score_run(
    run: Annotated[
        Path,
        typer.Option(
            help="Run file: Quarry JSON {qid: {docid: score}} (.gz too) or TREC run lines "
            "'qid Q0 docid rank score tag'; told apart by content"
        ),
    ],
    data: Annotated[
        Path | None, typer.Option(help="BEIR folder whose qrels/<split>.tsv judges the run")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Qrels split with --data (qrels/<split>.tsv); default test")
    ] = None,
    qrels: Annotated[
        Path | None, typer.Option(help="TREC qrels 'qid Q0 docid rel' (instead of --data)")
    ] = None,
    metric: MetricOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder; default evaluation/runs/<dataset or qrels name>"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Run name; default the run file's name without suffixes")
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            help="KEY=VALUE stored in the record's config, repeatable (model=..., steps=1000); "
            "overrides --meta",
        ),
    ] = None,
    meta: Annotated[
        Path | None,
        typer.Option(help="JSON object merged into the record's config (how the run was made)"),
    ] = None,
) -> None:
    """Score a precomputed run against qrels; its <name>.json feeds `quarry eval compare`.

    Each query's documents are ranked by descending score, ties in the file's order (JSON)
    or by the rank column (TREC). Queries judged in the qrels but absent from the run (or
    with an empty ranking) score 0 in every metric and count in the averages; run queries
    with no judgements are ignored.
    """
    from core.datasets import load_beir, load_run, load_trec_qrels, run_format
    from core.errors import InvalidRequest
    from evaluation.metrics import DEFAULT_METRICS, check_metric, evaluate_run

    setup_cli()
    metrics = [check_metric(m) for m in (metric or DEFAULT_METRICS)]
    extra = _extra_config(meta, config or [])
    dataset_info: dict[str, Any]
    if data is not None and qrels is None:
        dataset = load_beir(data, split or "test")
        judgements = dataset.qrels
        dataset_info = {
            "name": dataset.name,
            "folder": str(Path(data).resolve()),
            "split": dataset.split,
        }
    elif qrels is not None and data is None:
        if split is not None:
            raise InvalidRequest("--split selects the qrels of a BEIR folder; use it with --data")
        judgements = load_trec_qrels(qrels)
        dataset_info = {"name": _bare_stem(qrels), "qrels": str(Path(qrels).resolve())}
    else:
        raise InvalidRequest(
            "Pass exactly one of --data (a BEIR folder) and --qrels (a TREC qrels file)"
        )
    dataset_info["queries"] = len(judgements)
    dataset_info["judgements"] = sum(len(v) for v in judgements.values())

    fmt = run_format(run)
    ranking = load_run(run, fmt=fmt)
    run_name = _slug(name or _bare_stem(run))
    out_dir = out or RUNS_DIR / _slug(str(dataset_info["name"]))
    source = Path(run).resolve()
    for written in (out_dir / f"{run_name}.run.json", out_dir / f"{run_name}.json"):
        if written.resolve() == source:
            raise InvalidRequest(
                f"Writing {written} would overwrite the run being scored; pass --name or --out"
            )
    result = evaluate_run(judgements, ranking, metrics, preserve_order=True)
    _warn_coverage(source.name, result, unit="a ranking")
    absent = int(result.coverage["judged_absent"])
    unjudged = int(result.coverage["unjudged"])
    record_config = {
        "dataset": dataset_info,
        "run": {
            "file": str(source),
            "format": fmt,
            "queries": len(ranking),
            "judged_absent": absent,
            "unjudged": unjudged,
        },
        "metrics": metrics,
        **extra,
    }
    path = _save(
        out_dir,
        run_name,
        kind="run",
        config=record_config,
        result=result,
        run=ranking,
        timings={},
    )
    _print_result(run_name, result, {}, path, unit="a ranking")


@app.command()
@friendly
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more <name>.json result files")],
    baseline: Annotated[
        str | None, typer.Option(help="Run name to test the others against (default: all pairs)")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="Metric(s) to test, repeatable (default ndcg@10)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder")] = RUNS_DIR / "compare",
    name: Annotated[str, typer.Option(help="File stem of the report")] = "compare",
    n_resamples: Annotated[int, typer.Option(min=1, help="Randomisation test resamples")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the randomisation test")] = 0,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Significance level")] = 0.05,
) -> None:
    """Paired t-test and randomisation test between runs (Holm-corrected): JSON, markdown, PNG.

    The PNG has a panel per metric; runs that differ significantly from the baseline (Holm-
    adjusted randomisation p < alpha) are marked with an asterisk.
    """
    from core.errors import InvalidRequest
    from evaluation.report import load_run_record, markdown_report, write_comparison_report
    from evaluation.significance import compare as compare_runs

    setup_cli()
    if len(runs) < 2:
        raise InvalidRequest("Compare needs at least two run files")
    records: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for path in runs:
        record = load_run_record(path)
        run_name = str(record["name"])
        if run_name in records:
            raise InvalidRequest(
                f"Two runs are named {run_name!r} ({sources[run_name]}, {path}); "
                "re-run one with --name"
            )
        records[run_name] = record
        sources[run_name] = str(path)
    metrics = list(dict.fromkeys(metric or ["ndcg@10"]))
    comparisons = []
    for m in metrics:
        per_query: dict[str, dict[str, float]] = {}
        for run_name, record in records.items():
            if m not in record["aggregate"]:
                have = ", ".join(record["aggregate"])
                raise InvalidRequest(f"Run {run_name!r} has no {m!r} (it has: {have})")
            per_query[run_name] = {
                qid: float(vals[m]) for qid, vals in record["per_query"].items() if m in vals
            }
        comparisons.append(
            compare_runs(
                per_query,
                baseline=baseline,
                metric=m,
                n_resamples=n_resamples,
                seed=seed,
                alpha=alpha,
            )
        )
    aggregates = {n: r["aggregate"] for n, r in records.items()}
    coverage = {n: r["coverage"] for n, r in records.items() if isinstance(r.get("coverage"), dict)}
    paths = write_comparison_report(
        out,
        aggregates,
        {n: r["per_query"] for n, r in records.items()},
        comparisons,
        baseline=baseline,
        stem=_slug(name),
        sources=sources,
        coverage=coverage,
    )
    typer.echo(markdown_report(aggregates, comparisons, title="Run comparison", coverage=coverage))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("ctr")
@friendly
def ctr_results(
    results: Annotated[
        list[Path],
        typer.Argument(help="metrics.json files of `quarry train ctr` (or their folders)"),
    ],
    baseline: Annotated[
        str | None, typer.Option(help="Run name to test the others against (default: all pairs)")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder")] = RUNS_DIR / "ctr",
    name: Annotated[str, typer.Option(help="File stem of the report")] = "ctr",
    n_resamples: Annotated[int, typer.Option(min=1, help="Randomisation test resamples")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the randomisation test")] = 0,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Significance level")] = 0.05,
) -> None:
    """CTR models across seeds: mean ± std, paired per-user GAUC tests (Holm): JSON, MD, PNG."""
    from evaluation.ctr import compare_ctr, load_ctr_results, markdown, write_ctr_report

    setup_cli()
    runs = load_ctr_results(results)
    comparison = None
    if len(runs) > 1:
        comparison = compare_ctr(
            runs, baseline=baseline, n_resamples=n_resamples, seed=seed, alpha=alpha
        )
    paths = write_ctr_report(out, runs, comparison, stem=_slug(name))
    typer.echo(markdown(runs, comparison))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))
