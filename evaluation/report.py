"""Evaluation reports: JSON for machines, a markdown table for people, a PNG for a glance."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.significance import Comparison

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


def markdown_report(
    aggregates: Mapping[str, Mapping[str, float]],
    comparisons: Sequence[Comparison] = (),
    *,
    title: str = "Evaluation",
) -> str:
    """The runs x metrics table plus, per tested metric, the pairwise tests and a legend."""
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
    return "\n".join(parts) + "\n"


def plot_comparison(
    per_query_by_run: Mapping[str, Mapping[str, float]],
    metric: str,
    path: Path,
    *,
    baseline: str | None = None,
) -> Path:
    """PNG: per-query delta bars for two runs; mean metric bars (95% CI) for more.

    Draws on an Agg canvas chosen here, without pyplot, so it neither needs a display nor
    changes the process's global matplotlib backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(per_query_by_run)
    if len(names) < 1:
        raise ValueError("nothing to plot")
    qids = sorted(set.intersection(*(set(v) for v in per_query_by_run.values())))
    fig = Figure(figsize=(max(6.0, min(16.0, 0.12 * len(qids) + 4)), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if len(names) == 2:
        first = baseline if baseline in names else names[0]
        second = next(n for n in names if n != first)
        deltas = np.array([per_query_by_run[second][q] - per_query_by_run[first][q] for q in qids])
        order = np.argsort(-deltas, kind="stable")
        colors = ["#2a9d8f" if d > 0 else "#e76f51" if d < 0 else "#999999" for d in deltas]
        ax.bar(np.arange(len(qids)), deltas[order], color=[colors[i] for i in order], width=0.9)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel(f"queries, sorted by Δ ({len(qids)})")
        ax.set_ylabel(f"Δ {metric}")
        wins, losses = int((deltas > 0).sum()), int((deltas < 0).sum())
        ax.set_title(
            f"{second} - {first}\nmean Δ {metric} {deltas.mean():+.4f} "
            f"({wins} better, {losses} worse, {len(qids) - wins - losses} tied)",
            fontsize=10,
        )
        ax.set_xticks([])
    else:
        means, errs = [], []
        for name in names:
            v = np.array([per_query_by_run[name][q] for q in qids])
            means.append(float(v.mean()))
            errs.append(1.96 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else 0.0)
        x = np.arange(len(names))
        colors = ["#264653" if n == baseline else "#2a9d8f" for n in names]
        ax.bar(x, means, yerr=errs, capsize=4, color=colors)
        for xi, m in zip(x, means, strict=True):
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
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(f"mean {metric} over {len(qids)} queries (95% CI)", fontsize=10)
    fig.tight_layout()
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
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (first tested metric).

    ``per_query_by_run`` is run -> query id -> metric -> value, as stored in run JSON files.
    """
    out_dir = Path(out_dir)
    payload = {
        "baseline": baseline,
        "runs": {
            name: {"aggregate": agg, "source": (sources or {}).get(name)}
            for name, agg in aggregates.items()
        },
        "comparisons": [c.to_dict() for c in comparisons],
    }
    paths = {"json": write_json(out_dir / f"{stem}.json", payload)}
    md = out_dir / f"{stem}.md"
    md.write_text(markdown_report(aggregates, comparisons, title="Run comparison"), "utf-8")
    paths["markdown"] = md
    if comparisons:
        metric = comparisons[0].metric
        values = {
            run: {qid: vals[metric] for qid, vals in pq.items() if metric in vals}
            for run, pq in per_query_by_run.items()
        }
        paths["png"] = plot_comparison(values, metric, out_dir / f"{stem}.png", baseline=baseline)
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
