"""Paired t-test, sign-flip randomisation test and the Holm correction."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidRequest
from evaluation.significance import compare, holm


def _runs(n: int = 40, seed: int = 1) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.7, n)
    return {
        "base": {f"q{i}": float(v) for i, v in enumerate(base)},
        "same": {f"q{i}": float(v) for i, v in enumerate(base)},
        "better": {f"q{i}": float(v + 0.15 + rng.normal(0, 0.05)) for i, v in enumerate(base)},
        "noisy": {f"q{i}": float(v + rng.normal(0, 0.1)) for i, v in enumerate(base)},
    }


def test_identical_runs_are_not_different() -> None:
    runs = _runs()
    res = compare({"base": runs["base"], "same": runs["same"]}, baseline="base", metric="m")
    (pair,) = res.pairs
    assert pair.delta == 0.0
    assert pair.p_ttest == pytest.approx(1.0) and pair.p_randomization == pytest.approx(1.0)
    assert not pair.significant


def test_clearly_better_run_is_significant() -> None:
    runs = _runs()
    res = compare(
        {"base": runs["base"], "better": runs["better"]}, baseline="base", metric="m", seed=3
    )
    (pair,) = res.pairs
    assert pair.delta == pytest.approx(0.15, abs=0.03)
    assert pair.p_ttest < 1e-6
    # 2**40 sign patterns > 10,000 resamples: the smallest reachable p is 1 / 10,001.
    assert pair.p_randomization < 1e-3
    assert pair.significant and pair.p_randomization_holm == pair.p_randomization


def test_randomisation_is_exact_for_few_queries() -> None:
    # 3 queries, all deltas positive: of the 2**3 sign patterns only all-plus and
    # all-minus reach |mean| >= the observed one -> p = 2/8.
    a = {"q1": 0.1, "q2": 0.2, "q3": 0.3}
    b = {"q1": 0.2, "q2": 0.4, "q3": 0.6}
    (pair,) = compare({"a": a, "b": b}, baseline="a", metric="m").pairs
    assert pair.p_randomization == pytest.approx(0.25)


def test_seeded_and_reproducible() -> None:
    runs = _runs()
    r1 = compare(runs, baseline="base", metric="m", seed=7, n_resamples=2000)
    r2 = compare(runs, baseline="base", metric="m", seed=7, n_resamples=2000)
    assert r1.pairs == r2.pairs


def test_holm_known_values_and_monotone() -> None:
    # Sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([]) == []
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12)
    adj = np.array(holm(p.tolist()))
    assert np.all(adj >= p) and np.all(adj <= 1.0)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)  # same order as the raw p-values


def test_baseline_pairs_are_holm_corrected() -> None:
    runs = _runs()
    res = compare(runs, baseline="base", metric="ndcg@10")
    assert [(p.baseline, p.run) for p in res.pairs] == [
        ("base", "same"),
        ("base", "better"),
        ("base", "noisy"),
    ]
    raw = [p.p_randomization for p in res.pairs]
    assert [p.p_randomization_holm for p in res.pairs] == pytest.approx(holm(raw))
    assert [p.p_ttest_holm for p in res.pairs] == pytest.approx(
        holm([p.p_ttest for p in res.pairs])
    )
    assert res.against("better") is res.pairs[1] and res.against("base") is None
    d = res.to_dict()
    assert d["n_queries"] == 40 and len(d["pairs"]) == 3


def test_all_pairs_without_baseline() -> None:
    res = compare(_runs(), baseline=None, metric="m")
    assert len(res.pairs) == 6  # 4 choose 2


def test_aligns_on_shared_queries() -> None:
    a = {"q1": 0.1, "q2": 0.2, "q3": 0.3}
    b = {"q2": 0.5, "q3": 0.5, "q4": 0.9}
    res = compare({"a": a, "b": b}, baseline="a", metric="m")
    assert res.query_ids == ["q2", "q3"]
    assert res.pairs[0].mean_baseline == pytest.approx(0.25)


def test_errors() -> None:
    with pytest.raises(InvalidRequest, match="share no query"):
        compare({"a": {"q1": 1.0}, "b": {"q2": 1.0}}, baseline=None, metric="m")
    with pytest.raises(InvalidRequest, match="Unknown baseline 'c'"):
        compare({"a": {"q1": 1.0}, "b": {"q1": 1.0}}, baseline="c", metric="m")
    with pytest.raises(InvalidRequest, match="at least two runs"):
        compare({"a": {"q1": 1.0}}, baseline=None, metric="m")
