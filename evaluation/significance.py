"""Paired significance tests between runs on per-query metric values.

For each pair (the baseline against every other run, or every pair when there is no
baseline) on the queries all runs share:

- the mean delta (run minus baseline / second minus first);
- a paired t-test (``scipy.stats.ttest_rel``);
- a paired randomisation test: under the null the two systems are exchangeable per query,
  so each per-query difference's sign is flipped at random (``scipy.stats.permutation_test``
  with ``permutation_type="samples"``). It is exact when ``2**n <= n_resamples`` and uses the
  ``(b + 1) / (n_resamples + 1)`` estimate otherwise. This is the test Smucker et al. (CIKM
  2007) recommend for IR; the t-test is reported next to it.
- Holm-Bonferroni adjusted p-values over the family of comparisons (each test separately).
  With a single comparison the adjustment is the identity; with several it controls the
  family-wise error rate, which the raw p-values do not. ``significant`` uses the adjusted
  randomisation p-value.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.errors import InvalidRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairComparison:
    """One paired comparison: ``run`` against ``baseline`` on ``n_queries`` shared queries."""

    baseline: str
    run: str
    n_queries: int
    mean_baseline: float
    mean_run: float
    delta: float
    t_statistic: float
    p_ttest: float
    p_randomization: float
    p_ttest_holm: float
    p_randomization_holm: float
    significant: bool


@dataclass
class Comparison:
    """All pairwise comparisons of one metric, with the settings that produced them."""

    metric: str
    baseline: str | None
    alpha: float
    n_resamples: int
    seed: int
    query_ids: list[str]
    pairs: list[PairComparison] = field(default_factory=list)

    def against(self, run: str) -> PairComparison | None:
        """The comparison of ``run`` with the baseline, if there is one."""
        for pair in self.pairs:
            if pair.run == run and pair.baseline == self.baseline:
                return pair
        return None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_queries"] = len(out.pop("query_ids"))
        out["tests"] = {
            "ttest": "scipy.stats.ttest_rel (two-sided)",
            "randomization": "paired sign-flip permutation test (two-sided, mean difference)",
            "correction": "Holm-Bonferroni over the pairs",
        }
        return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th (0-based) of m p-values becomes ``(m - i) * p``, made
    non-decreasing by a running maximum and capped at 1.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def paired_ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test of ``b - a``; defined (not NaN) when the deltas are constant."""
    d = b - a
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        # Zero variance: t is 0 (no difference) or infinite (a constant shift).
        if abs(d[0]) <= 1e-12:
            return 0.0, 1.0
        return float(np.sign(d[0]) * np.inf), 0.0
    from scipy import stats

    res = stats.ttest_rel(b, a)
    return float(res.statistic), float(res.pvalue)


def randomization_test(a: np.ndarray, b: np.ndarray, *, n_resamples: int, seed: int) -> float:
    """Two-sided paired sign-flip test on the mean of ``b - a``; returns the p-value."""
    d = b - a
    if not np.any(np.abs(d) > 1e-12):
        return 1.0
    from scipy import stats

    def mean_delta(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(y - x, axis=axis)

    res = stats.permutation_test(
        (a, b),
        mean_delta,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        batch=1000,  # bounds memory to 1000 x n_queries per step
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(1.0, res.pvalue))


def align(per_query_by_run: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The query ids every run has, sorted; raises if there are none."""
    sets = [set(v) for v in per_query_by_run.values()]
    shared = set.intersection(*sets) if sets else set()
    if not shared:
        raise InvalidRequest("The runs share no query id; nothing to compare")
    dropped = set.union(*sets) - shared
    if dropped:
        logger.warning(
            "Comparing on the %d queries all runs share; %d others are left out",
            len(shared),
            len(dropped),
        )
    return sorted(shared)


def compare(
    per_query_by_run: Mapping[str, Mapping[str, float]],
    *,
    baseline: str | None,
    metric: str,
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Paired tests of ``metric`` between runs (see the module docstring)."""
    names = list(per_query_by_run)
    if len(names) < 2:
        raise InvalidRequest("A comparison needs at least two runs")
    if baseline is not None and baseline not in per_query_by_run:
        raise InvalidRequest(f"Unknown baseline {baseline!r}. Runs: {', '.join(names)}")
    if n_resamples < 1:
        raise InvalidRequest("n_resamples must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise InvalidRequest("alpha must be between 0 and 1")
    qids = align(per_query_by_run)
    values = {name: np.array([float(per_query_by_run[name][q]) for q in qids]) for name in names}
    if baseline is not None:
        pairs = [(baseline, name) for name in names if name != baseline]
    else:
        pairs = list(itertools.combinations(names, 2))

    raw: list[tuple[str, str, float, float, float]] = []
    for first, second in pairs:
        a, b = values[first], values[second]
        t, p_t = paired_ttest(a, b)
        p_r = randomization_test(a, b, n_resamples=n_resamples, seed=seed)
        raw.append((first, second, t, p_t, p_r))
    holm_t = holm([r[3] for r in raw])
    holm_r = holm([r[4] for r in raw])

    result = Comparison(
        metric=metric,
        baseline=baseline,
        alpha=alpha,
        n_resamples=n_resamples,
        seed=seed,
        query_ids=qids,
    )
    for (first, second, t, p_t, p_r), adj_t, adj_r in zip(raw, holm_t, holm_r, strict=True):
        a, b = values[first], values[second]
        result.pairs.append(
            PairComparison(
                baseline=first,
                run=second,
                n_queries=len(qids),
                mean_baseline=float(a.mean()),
                mean_run=float(b.mean()),
                delta=float(b.mean() - a.mean()),
                t_statistic=t,
                p_ttest=p_t,
                p_randomization=p_r,
                p_ttest_holm=adj_t,
                p_randomization_holm=adj_r,
                significant=adj_r < alpha,
            )
        )
    return result
