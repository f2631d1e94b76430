"""Evaluation reports: JSON for machines, a markdown table for people, a PNG for a glance."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.significance import Comparison

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

SIGNIFICANT_MARK = "†"


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become null (JSON has no Infinity/NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented UTF-8 JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(_jsonable(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)
    return path


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    aligns = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _p(value: float) -> str:
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def metrics_table(
    aggregates: Mapping[str, Mapping[str, float]],
    comparisons: Sequence[Comparison] = (),
    *,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Markdown table, runs x metrics, 4 decimals.

    A cell is marked ``†`` when that metric was tested against a baseline and the run
    differs significantly (Holm-adjusted randomisation p < alpha). ``extra`` adds text
    columns per run (e.g. latency).
    """
    metrics = list(dict.fromkeys(m for agg in aggregates.values() for m in agg))
    extra_cols = list(dict.fromkeys(c for cols in (extra or {}).values() for c in cols))
    tested = {c.metric: c for c in comparisons if c.baseline is not None}
    rows = []
    for run, agg in aggregates.items():
        label = run
        if any(c.baseline == run for c in tested.values()):
            label = f"{run} (baseline)"
        row = [label]
        for m in metrics:
            if m not in agg:
                row.append("-")
                continue
            cell = f"{agg[m]:.4f}"
            pair = tested[m].against(run) if m in tested else None
            if pair is not None and pair.significant:
                cell += SIGNIFICANT_MARK
            row.append(cell)
        row += [(extra or {}).get(run, {}).get(c, "") for c in extra_cols]
        rows.append(row)
    return _table(["run", *metrics, *extra_cols], rows)


def comparison_table(comparison: Comparison) -> str:
    """Markdown table of one metric's pairwise tests."""
    rows = [
        [
            f"{p.run} vs {p.baseline}",
            str(p.n_queries),
            f"{p.mean_baseline:.4f}",
            f"{p.mean_run:.4f}",
            f"{p.delta:+.4f}",
            _p(p.p_ttest),
            _p(p.p_randomization),
            _p(p.p_ttest_holm),
            _p(p.p_randomization_holm),
            "yes" if p.significant else "no",
        ]
        for p in comparison.pairs
    ]
    headers = [
        "pair (B vs A)",
        "queries",
        f"A {comparison.metric}",
        f"B {comparison.metric}",
        "Δ (B-A)",
        "p t-test",
        "p randomisation",
        "p t-test (Holm)",
        "p randomisation (Holm)",
        f"significant (alpha={comparison.alpha:g})",
    ]
    return _table(headers, rows)


def coverage_table(coverage_by_run: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of each run's query coverage (:func:`evaluation.metrics.query_coverage`)."""
    rows = [
        [
            run,
            str(cov.get("judged", "")),
            str(cov.get("evaluated", "")),
            str(cov.get("judged_absent", "")),
            str(cov.get("unjudged", "")),
        ]
        for run, cov in coverage_by_run.items()
        if cov
    ]
    headers = [
        "run",
        "judged queries",
        "with results",
        "judged, no results (scored 0)",
        "unjudged (left out)",
    ]
    return _table(headers, rows)


def markdown_report(
    aggregates: Mapping[str, Mapping[str, float]],
    comparisons: Sequence[Comparison] = (),
    *,
    title: str = "Evaluation",
    coverage: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The runs x metrics table plus, per tested metric, the pairwise tests and a legend.

    ``coverage`` (run -> its result's ``coverage``) adds a query-coverage table when some
    run misses judged queries or holds unjudged ones: their means average zeros in.
    """
    parts = [f"# {title}", "", metrics_table(aggregates, comparisons)]
    for comp in comparisons:
        parts += ["", f"## {comp.metric}: paired tests", "", comparison_table(comp)]
    if comparisons:
        c = comparisons[0]
        parts += [
            "",
            f"{SIGNIFICANT_MARK}: differs from the baseline with Holm-adjusted randomisation "
            f"p < alpha. Paired tests on {len(c.query_ids)} shared queries; randomisation test: "
            f"{c.n_resamples} sign flips (exact when 2^n is smaller), seed {c.seed}; Holm-"
            "Bonferroni adjustment over the pairs of each metric.",
        ]
    shown = {run: cov for run, cov in (coverage or {}).items() if cov}
    if any(cov.get("judged_absent") or cov.get("unjudged") for cov in shown.values()):
        parts += [
            "",
            "## Query coverage",
            "",
            coverage_table(shown),
            "",
            "Judged queries without results score 0 and count in the means; unjudged "
            "queries are left out.",
        ]
    return "\n".join(parts) + "\n"


SIGNIFICANT_PLOT_MARK = "*"
_BASELINE_COLOR = "#264653"
_RUN_COLOR = "#2a9d8f"
_SIGNIFICANT_COLOR = "#e9c46a"


def significant_runs(comparison: Comparison, runs: Sequence[str]) -> set[str]:
    """The runs of ``runs`` that differ significantly (Holm-adjusted) from the baseline.

    Without a baseline the only pair of a two-run comparison counts (it compares the second
    run with the first); with more runs and no baseline there is none to mark against.
    """
    if comparison.baseline is not None:
        return {
            run
            for run in runs
            if (pair := comparison.against(run)) is not None and pair.significant
        }
    if len(runs) == 2 and len(comparison.pairs) == 1 and comparison.pairs[0].significant:
        return {comparison.pairs[0].run}
    return set()


def comparison_figure(
    per_query_by_run: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[str],
    *,
    baseline: str | None = None,
    comparisons: Sequence[Comparison] = (),
) -> Figure:
    """The comparison figure: one panel per metric, significant runs marked.

    ``per_query_by_run`` is run -> query id -> metric -> value. Two runs: each panel shows the
    per-query deltas (second minus baseline/first), its title starred when the difference is
    significant. More runs: mean bars with 95% CIs; runs that differ significantly from the
    baseline (Holm-adjusted randomisation p < alpha, from ``comparisons`` of the metric) get
    a highlighted bar and a ``*`` above it, explained in the legend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(per_query_by_run)
    metrics = list(dict.fromkeys(metrics))
    if not names or not metrics:
        raise ValueError("nothing to plot")
    by_metric = {c.metric: c for c in comparisons}
    n_queries = len(set.intersection(*(set(v) for v in per_query_by_run.values())))
    width = max(6.0, min(16.0, 0.12 * n_queries + 4)) if len(names) == 2 else 10.0
    fig = Figure(figsize=(width, 4.5 * len(metrics)), dpi=110)
    FigureCanvasAgg(fig)
    for row, metric in enumerate(metrics, start=1):
        ax = fig.add_subplot(len(metrics), 1, row)
        values = {
            run: {q: float(v[metric]) for q, v in pq.items() if metric in v}
            for run, pq in per_query_by_run.items()
        }
        qids = sorted(set.intersection(*(set(v) for v in values.values())))
        comp = by_metric.get(metric)
        marked = significant_runs(comp, names) if comp is not None else set()
        alpha = comp.alpha if comp is not None else 0.05
        note = (
            f"{SIGNIFICANT_PLOT_MARK}: significantly different from the baseline\n"
            f"(Holm-adjusted randomisation p < {alpha:g})"
        )
        if not qids:
            ax.set_title(f"{metric}: no query shared by all runs", fontsize=10)
            ax.set_axis_off()
        elif len(names) == 2:
            _delta_panel(ax, values, qids, metric, names, baseline, marked, note, comp is not None)
        else:
            _means_panel(ax, values, qids, metric, names, baseline, marked, note, comp)
    fig.tight_layout()
    return fig


def _delta_panel(
    ax: Axes,
    values: Mapping[str, Mapping[str, float]],
    qids: Sequence[str],
    metric: str,
    names: Sequence[str],
    baseline: str | None,
    marked: set[str],
    note: str,
    tested: bool,
) -> None:
    first = baseline if baseline is not None and baseline in names else names[0]
    second = next(n for n in names if n != first)
    deltas = np.array([values[second][q] - values[first][q] for q in qids])
    order = np.argsort(-deltas, kind="stable")
    colors = ["#2a9d8f" if d > 0 else "#e76f51" if d < 0 else "#999999" for d in deltas]
    ax.bar(np.arange(len(qids)), deltas[order], color=[colors[i] for i in order], width=0.9)
    ax.axhline(0.0, color="black", linewidth=0.8)
    xlabel = f"queries, sorted by Δ ({len(qids)})"
    if tested:  # the legend note, under the axis: the bars fill the panel
        xlabel += "\n" + note
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Δ {metric}")
    wins, losses = int((deltas > 0).sum()), int((deltas < 0).sum())
    star = f" {SIGNIFICANT_PLOT_MARK}" if second in marked else ""
    verdict = ""
    if tested:
        verdict = "; significant" if star else "; not significant"
    ax.set_title(
        f"{second} - {first}{star}\nmean Δ {metric} {deltas.mean():+.4f} "
        f"({wins} better, {losses} worse, {len(qids) - wins - losses} tied{verdict})",
        fontsize=10,
    )
    ax.set_xticks([])


def _means_panel(
    ax: Axes,
    values: Mapping[str, Mapping[str, float]],
    qids: Sequence[str],
    metric: str,
    names: Sequence[str],
    baseline: str | None,
    marked: set[str],
    note: str,
    comp: Comparison | None,
) -> None:
    from matplotlib.patches import Patch

    means, errs = [], []
    for name in names:
        v = np.array([values[name][q] for q in qids])
        means.append(float(v.mean()))
        errs.append(1.96 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else 0.0)
    x = np.arange(len(names))
    colors = [
        _BASELINE_COLOR if n == baseline else _SIGNIFICANT_COLOR if n in marked else _RUN_COLOR
        for n in names
    ]
    ax.bar(x, means, yerr=errs, capsize=4, color=colors)
    for xi, m, err, name in zip(x, means, errs, names, strict=True):
        ax.annotate(
            f"{m:.3f}",
            (xi, 0.0),  # inside the bar, clear of the error bar
            ha="center",
            va="bottom",
            fontsize=9,
            color="white",
            xytext=(0, 3),
            textcoords="offset points",
        )
        if name in marked:
            ax.annotate(
                SIGNIFICANT_PLOT_MARK,
                (xi, m + err),
                ha="center",
                va="bottom",
                fontsize=14,
                fontweight="bold",
                xytext=(0, 2),
                textcoords="offset points",
            )
    top = max(m + e for m, e in zip(means, errs, strict=True))
    if top > 0:
        ax.set_ylim(0.0, top * 1.15)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"mean {metric} over {len(qids)} queries (95% CI)", fontsize=10)
    handles: list[Patch] = []
    if baseline in names:
        handles.append(Patch(color=_BASELINE_COLOR, label=f"baseline: {baseline}"))
    if comp is not None and comp.baseline is not None:
        handles.append(Patch(color=_SIGNIFICANT_COLOR, label=note))
        handles.append(Patch(color=_RUN_COLOR, label="not significant"))
    elif comp is not None:
        handles.append(Patch(color=_RUN_COLOR, label="no baseline: pairwise tests in the report"))
    if handles:
        # Beside the panel, clear of the bars and their labels.
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_comparison(
    per_query_by_run: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[str] | str,
    path: Path,
    *,
    baseline: str | None = None,
    comparisons: Sequence[Comparison] = (),
) -> Path:
    """PNG of :func:`comparison_figure`: one panel per metric, significant runs marked.

    ``per_query_by_run`` is run -> query id -> metric -> value, as stored in run records.
    Draws on an Agg canvas chosen here, without pyplot, so it neither needs a display nor
    changes the process's global matplotlib backend.
    """
    fig = comparison_figure(
        per_query_by_run,
        [metrics] if isinstance(metrics, str) else metrics,
        baseline=baseline,
        comparisons=comparisons,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_comparison_report(
    out_dir: Path,
    aggregates: Mapping[str, Mapping[str, float]],
    per_query_by_run: Mapping[str, Mapping[str, Mapping[str, float]]],
    comparisons: Sequence[Comparison],
    *,
    baseline: str | None = None,
    stem: str = "compare",
    sources: Mapping[str, str] | None = None,
    coverage: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (a panel per tested metric).

    ``per_query_by_run`` is run -> query id -> metric -> value, as stored in run JSON files;
    ``coverage`` is run -> the run's query coverage, where its record has one.
    """
    out_dir = Path(out_dir)
    payload = {
        "baseline": baseline,
        "runs": {
            name: {
                "aggregate": agg,
                "source": (sources or {}).get(name),
                **({"coverage": (coverage or {})[name]} if (coverage or {}).get(name) else {}),
            }
            for name, agg in aggregates.items()
        },
        "comparisons": [c.to_dict() for c in comparisons],
    }
    paths = {"json": write_json(out_dir / f"{stem}.json", payload)}
    md = out_dir / f"{stem}.md"
    md.write_text(
        markdown_report(aggregates, comparisons, title="Run comparison", coverage=coverage),
        "utf-8",
    )
    paths["markdown"] = md
    if comparisons:
        paths["png"] = plot_comparison(
            per_query_by_run,
            [c.metric for c in comparisons],
            out_dir / f"{stem}.png",
            baseline=baseline,
            comparisons=comparisons,
        )
    return paths


def run_record(
    *,
    name: str,
    kind: str,
    config: Mapping[str, Any],
    aggregate: Mapping[str, float],
    per_query: Mapping[str, Mapping[str, float]],
    timings: Mapping[str, Any],
    command: str,
    run_file: str | None = None,
    coverage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``<name>.json`` document of one evaluated run (what ``quarry eval compare`` reads)."""
    from datetime import UTC, datetime
    from importlib import metadata

    try:
        version = metadata.version("quarry")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "name": name,
        "kind": kind,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "quarry_version": version,
        "config": dict(config),
        "aggregate": dict(aggregate),
        "per_query": {q: dict(v) for q, v in per_query.items()},
        "coverage": dict(coverage or {}),
        "timings": dict(timings),
        "run_file": run_file,
    }


def load_run_record(path: Path) -> dict[str, Any]:
    """Read a run's ``<name>.json``, checking it has a name, aggregates and per-query values."""
    from core.datasets import read_json
    from core.errors import InvalidRequest

    path = Path(path)
    record = read_json(path, "Run")
    if not isinstance(record, dict) or not all(
        isinstance(record.get(key), dict) for key in ("aggregate", "per_query")
    ):
        hint = (
            " (that is a ranking; pass its results file)" if path.name.endswith(".run.json") else ""
        )
        raise InvalidRequest(
            f"{path} is not an evaluation result: expected 'aggregate' and 'per_query'{hint}"
        )
    record.setdefault("name", path.name.removesuffix(".json"))
    return record
