"""CTR evaluation across models and seeds: mean ± std tables and paired significance tests.

Input: the ``metrics.json`` files ``quarry train ctr`` writes (one per model, each with
several seeds, the test samples, and every seed's test predictions). All of them must come
from the same test split (same samples in the same order, checked by a fingerprint).

- **Seeds.** Per model, the mean and standard deviation over seeds of test AUC, GAUC and
  logloss (and validation AUC).
- **Paired comparisons on users.** For each model and user, the user's test AUC is averaged
  over the seeds; the user's value is that average times ``n_u * U / sum(n)`` (``n_u`` the
  user's impressions, ``U`` the users with both classes), so the mean over users of these
  values *is* the model's GAUC (averaged over seeds). Models are compared on these paired
  per-user values with :func:`evaluation.significance.compare`: paired t-test and
  randomisation (sign-flip) test, Holm-adjusted over the pairs. Users with one class only
  (no AUC) are left out, as GAUC leaves them out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidRequest
from evaluation.report import _table, comparison_table, plot_comparison, write_json
from evaluation.significance import Comparison, compare
from ranker.ctr.metrics import per_user_auc

logger = logging.getLogger(__name__)

#: The metric name of the per-user values the paired tests run on.
PAIRED_METRIC = "gauc"
SUMMARY_METRICS = (("test", "auc"), ("test", "gauc"), ("test", "logloss"), ("validation", "auc"))


@dataclass(frozen=True)
class CTRResult:
    """One model's trained seeds, read from its ``metrics.json``."""

    name: str
    model: str
    source: str
    seeds: list[int]
    metrics: dict[str, dict[str, list[float]]]  # split -> metric -> value per seed
    users: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray  # (seeds, test samples)
    fingerprint: str

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """split -> metric -> ``{"mean", "std", "n"}`` over seeds (std with ddof 1)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for split, metrics in self.metrics.items():
            out[split] = {}
            for metric, values in metrics.items():
                arr = np.asarray(values, dtype=np.float64)
                std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
                out[split][metric] = {"mean": float(arr.mean()), "std": std, "n": len(arr)}
        return out

    def user_values(self) -> dict[str, float]:
        """Per-user test AUC averaged over seeds, scaled so their mean is the GAUC (module
        docstring); users with one class are left out."""
        per_seed = [per_user_auc(self.users, self.labels, p) for p in self.predictions]
        first = per_seed[0]
        ok = first.valid
        mean_auc = np.mean([s.auc[ok] for s in per_seed], axis=0)
        weights = first.impressions[ok].astype(np.float64)
        scaled = mean_auc * weights * len(weights) / weights.sum()
        return {str(u): float(v) for u, v in zip(first.users[ok], scaled, strict=True)}


def _read(path: Path) -> tuple[Path, dict[str, Any]]:
    from core.datasets import read_json

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    record = read_json(path, "CTR results")
    if not isinstance(record, dict) or record.get("kind") != "ctr":
        raise InvalidRequest(f"{path} is not a `quarry train ctr` metrics.json")
    return path, record


def load_ctr_result(path: Path) -> CTRResult:
    """Read a ``metrics.json`` (or the folder holding one) of ``quarry train ctr``."""
    path, record = _read(path)
    try:
        seeds = record["seeds"]
        test = record["test_samples"]
        metrics: dict[str, dict[str, list[float]]] = {}
        for split in ("validation", "test"):
            metrics[split] = {
                m: [float("nan") if s[split].get(m) is None else float(s[split][m]) for s in seeds]
                for m in ("auc", "gauc", "logloss")
                if all(m in s[split] for s in seeds)
            }
        predictions = np.array([s["test_predictions"] for s in seeds], dtype=np.float64)
        result = CTRResult(
            name=str(record.get("name") or record["model"]),
            model=str(record["model"]),
            source=str(path),
            seeds=[int(s["seed"]) for s in seeds],
            metrics=metrics,
            users=np.asarray(test["users"], dtype=str),
            labels=np.asarray(test["labels"], dtype=np.float64),
            predictions=predictions,
            fingerprint=str(record["data"]["test_fingerprint"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"{path} is missing CTR results ({exc})") from None
    if not result.seeds:
        raise InvalidRequest(f"{path} has no trained seed")
    if result.predictions.shape != (len(result.seeds), len(result.labels)):
        raise InvalidRequest(f"{path}: predictions do not match its test samples")
    return result


def load_ctr_results(paths: Sequence[Path]) -> list[CTRResult]:
    """Read several results, checking their names are distinct and their test splits equal."""
    results = [load_ctr_result(p) for p in paths]
    seen: dict[str, str] = {}
    for r in results:
        if r.name in seen:
            raise InvalidRequest(
                f"Two results are named {r.name!r} ({seen[r.name]}, {r.source}); "
                "train one with --name"
            )
        seen[r.name] = r.source
    first = results[0] if results else None
    for r in results[1:]:
        assert first is not None
        if r.fingerprint != first.fingerprint:
            raise InvalidRequest(
                f"{r.source} and {first.source} were tested on different samples (test "
                "fingerprints differ): train both on the same data and sample options"
            )
    return results


def _mean_std(stats: Mapping[str, float] | None, digits: int = 4) -> str:
    if not stats or stats["mean"] is None or math.isnan(stats["mean"]):
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def summary_table(results: Sequence[CTRResult], comparison: Comparison | None = None) -> str:
    """Markdown: model x (test AUC, GAUC, logloss, validation AUC) as mean ± std over seeds;
    ``†`` marks a GAUC significantly different from the baseline."""
    rows = []
    for r in results:
        s = r.summary()
        label = r.name + (" (baseline)" if comparison and comparison.baseline == r.name else "")
        cells = [_mean_std(s.get(split, {}).get(metric)) for split, metric in SUMMARY_METRICS]
        pair = comparison.against(r.name) if comparison is not None else None
        if pair is not None and pair.significant:
            cells[1] += " †"
        rows.append([label, r.model, str(len(r.seeds)), *cells])
    headers = ["run", "model", "seeds", "test AUC", "test GAUC", "test logloss", "val AUC"]
    return _table(headers, rows)


def training_table(record: Mapping[str, Any]) -> str:
    """Markdown of one ``quarry train ctr`` record: a row per seed, then mean ± std."""
    rows = []
    for s in record["seeds"]:
        val, test = s["validation"], s["test"]
        rows.append(
            [
                str(s["seed"]),
                str(s["best_epoch"]),
                f"{val['auc']:.4f}",
                *(f"{test.get(m, float('nan')):.4f}" for m in ("auc", "gauc", "logloss")),
            ]
        )
    summary = record["summary"]
    rows.append(
        [
            "mean ± std",
            "",
            _mean_std(summary["validation"].get("auc")),
            *(_mean_std(summary["test"].get(m)) for m in ("auc", "gauc", "logloss")),
        ]
    )
    headers = ["seed", "best epoch", "val AUC", "test AUC", "test GAUC", "test logloss"]
    return f"{record['name']} ({record['model']})\n\n" + _table(headers, rows)


def compare_ctr(
    results: Sequence[CTRResult],
    *,
    baseline: str | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Paired tests of the per-user GAUC values between models (module docstring)."""
    if len(results) < 2:
        raise InvalidRequest("A comparison needs at least two CTR results")
    return compare(
        {r.name: r.user_values() for r in results},
        baseline=baseline,
        metric=PAIRED_METRIC,
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
    )


def markdown(results: Sequence[CTRResult], comparison: Comparison | None) -> str:
    parts = ["# CTR models", "", summary_table(results, comparison)]
    if comparison is not None:
        parts += [
            "",
            "## Paired tests on users (test GAUC, averaged over seeds)",
            "",
            comparison_table(comparison),
            "",
            f"Mean ± std over seeds. Paired tests on {len(comparison.query_ids)} test users with "
            "both a click and a non-click (the 'queries' column): each user's AUC averaged over "
            "seeds, weighted by impressions so that the means are the GAUC; paired t-test and "
            f"randomisation test ({comparison.n_resamples} sign flips, seed {comparison.seed}), "
            "Holm-adjusted over the pairs. † marks a GAUC that differs from the baseline "
            f"(adjusted randomisation p < {comparison.alpha:g}).",
        ]
    return "\n".join(parts) + "\n"


def plot_seeds(results: Sequence[CTRResult], path: Path) -> Path:
    """PNG: test AUC and GAUC per model, mean with ± std error bars over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.3 * len(results) + 3), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(results))
    width = 0.38
    low = 0.5
    for offset, metric, color in ((-width / 2, "auc", "#264653"), (width / 2, "gauc", "#2a9d8f")):
        stats = [r.summary()["test"].get(metric, {"mean": np.nan, "std": 0.0}) for r in results]
        means = np.array([s["mean"] for s in stats])
        stds = np.array([s["std"] for s in stats])
        ax.bar(x + offset, means, width, yerr=stds, capsize=4, color=color, label=f"test {metric}")
        for xi, m, sd in zip(x + offset, means, stds, strict=True):
            ax.annotate(
                f"{m:.3f}",
                (xi, m + sd),  # above the error bar
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 6),
                textcoords="offset points",
            )
        if np.isfinite(means - stds).any():
            low = min(low, float(np.nanmin(means - stds)) - 0.02)
    ax.set_ylim(max(0.0, low), 1.0)
    ax.set_xticks(x, [f"{r.name}\n({len(r.seeds)} seeds)" for r in results])
    ax.set_ylabel("AUC")
    ax.set_title("Test AUC and GAUC, mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_ctr_report(
    out_dir: Path,
    results: Sequence[CTRResult],
    comparison: Comparison | None,
    *,
    stem: str = "ctr",
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md``, ``<stem>.png`` (seeds) and, with a comparison,
    ``<stem>-users.png`` (the paired per-user values)."""
    out_dir = Path(out_dir)
    payload = {
        "runs": {
            r.name: {
                "model": r.model,
                "source": r.source,
                "seeds": r.seeds,
                "summary": r.summary(),
                "test_fingerprint": r.fingerprint,
            }
            for r in results
        },
        "comparison": comparison.to_dict() if comparison is not None else None,
    }
    paths = {"json": write_json(out_dir / f"{stem}.json", payload)}
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results, comparison), encoding="utf-8")
    paths["markdown"] = md
    paths["png"] = plot_seeds(results, out_dir / f"{stem}.png")
    if comparison is not None:
        per_user = {
            r.name: {u: {PAIRED_METRIC: v} for u, v in r.user_values().items()} for r in results
        }
        paths["users_png"] = plot_comparison(
            per_user,
            PAIRED_METRIC,
            out_dir / f"{stem}-users.png",
            baseline=comparison.baseline,
            comparisons=[comparison],
        )
    return paths
