"""Fitting a fusion reranker's weights on judged queries, plainly or k-fold by query.

Each component scores every query's candidates once (:func:`component_runs`; ``first-stage``
is the candidates' own order). The weights are then chosen by a grid search over the
simplex (non-negative, summing to one, in steps of ``step``), maximising ``objective`` — a
mean metric of a run over the fitting queries, supplied by the caller (``quarry train
reranker`` passes ranx's nDCG@10 from :mod:`evaluation.metrics`) — evaluated on the fitting
queries only. Ties go to the first grid point.

:func:`train_fusion_kfold` uses the same query split as
:func:`ranker.text.train.kfold.train_kfold` (:func:`~ranker.text.train.splits.kfold_split`
with the same seed), writes one fusion directory per fold, ``folds.json``, and the pooled run
in which each query was fused with weights fit without it. ``score_kfold`` on that directory
reproduces the pooled run by loading the fold models.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import CandidateSet
from core.errors import InvalidRequest
from ranker.text.fusion import (
    FIRST_STAGE,
    FusionComponent,
    FusionConfig,
    check_normalization,
    first_stage_scores,
    fuse,
    load_component,
)
from ranker.text.registry import LoadOptions
from ranker.text.train.kfold import POOLED_RUN, FoldsPlan, Run, score_candidates, write_run
from ranker.text.train.splits import kfold_split

logger = logging.getLogger(__name__)

#: ``objective(run)``: the mean metric of ``run`` over its queries (higher is better).
Objective = Callable[[Mapping[str, Mapping[str, float]]], float]
COMPONENT_RUNS_DIR = "component-runs"
DEFAULT_STEP = 0.1


def component_runs(
    names: Sequence[str],
    candidates: CandidateSet,
    options: LoadOptions | None = None,
    *,
    progress: bool = False,
) -> dict[str, Run]:
    """``{component: run}``: every query's candidates scored by each component."""
    runs: dict[str, Run] = {}
    for name in names:
        if name == FIRST_STAGE:
            runs[name] = {}
            for q, hits in candidates.candidates.items():
                ranked: dict[str, float] = {}
                for h, s in zip(hits, first_stage_scores(len(hits)), strict=True):
                    ranked.setdefault(h.docid, float(s))  # a repeated docid keeps its first
                runs[name][q] = ranked
            continue
        logger.info("scoring %d queries with component %s", len(candidates.candidates), name)
        reranker = load_component(name, options)
        runs[name] = score_candidates(reranker, candidates, progress=progress)
        del reranker
    return runs


def score_matrices(
    candidates: CandidateSet, runs: Mapping[str, Mapping[str, Mapping[str, float]]]
) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{qid: (docids in candidate order, C x n raw scores)}`` from the component runs."""
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for qid, hits in candidates.candidates.items():
        docids = list(dict.fromkeys(h.docid for h in hits))
        try:
            rows = [[run[qid][d] for d in docids] for run in runs.values()]
        except KeyError as exc:
            raise InvalidRequest(
                f"A component run lacks query {qid} or one of its documents"
            ) from exc
        out[qid] = (docids, np.asarray(rows, dtype=np.float64).reshape(len(runs), len(docids)))
    return out


def weight_grid(n: int, step: float = DEFAULT_STEP) -> np.ndarray:
    """Every weight vector on the simplex of ``n`` components with coordinates in multiples
    of ``step`` (``1 / step`` must be a whole number)."""
    if n < 1:
        raise InvalidRequest("A fusion needs at least one component")
    parts = round(1.0 / step)
    if parts < 1 or abs(parts * step - 1.0) > 1e-9:
        raise InvalidRequest(f"The grid step must divide 1 (0.1, 0.05, ...), got {step}")
    points = [c for c in itertools.product(range(parts + 1), repeat=n - 1) if sum(c) <= parts]
    return np.asarray([[*c, parts - sum(c)] for c in points], dtype=np.float64) / parts


def fused_run(
    matrices: Mapping[str, tuple[list[str], np.ndarray]],
    query_ids: Sequence[str],
    weights: Sequence[float] | np.ndarray,
    normalization: str,
) -> Run:
    """The run of ``query_ids`` fused with ``weights``, documents best first (ties keep the
    candidate order)."""
    run: Run = {}
    for qid in query_ids:
        docids, matrix = matrices[qid]
        scores = fuse(matrix, weights, normalization)
        run[qid] = {docids[i]: float(scores[i]) for i in np.argsort(-scores, kind="stable")}
    return run


def fit_weights(
    matrices: Mapping[str, tuple[list[str], np.ndarray]],
    query_ids: Sequence[str],
    objective: Objective,
    *,
    normalization: str = "minmax",
    step: float = DEFAULT_STEP,
) -> tuple[np.ndarray, float]:
    """The grid point maximising ``objective`` on ``query_ids`` alone, and its value."""
    check_normalization(normalization)
    if not query_ids:
        raise InvalidRequest("No queries to fit the fusion weights on")
    n = next(iter(matrices.values()))[1].shape[0]
    best_value, best = -np.inf, None
    for weights in weight_grid(n, step):
        value = float(objective(fused_run(matrices, query_ids, weights, normalization)))
        if value > best_value + 1e-12:
            best_value, best = value, weights
    assert best is not None
    return best, best_value


def _config(
    names: Sequence[str], weights: np.ndarray, normalization: str, fit: dict[str, Any]
) -> FusionConfig:
    components = tuple(
        FusionComponent(n, round(float(w), 6)) for n, w in zip(names, weights, strict=True)
    )
    return FusionConfig(components, normalization=normalization, fit=fit)


def _save_component_runs(out: Path, runs: Mapping[str, Run]) -> None:
    folder = out / COMPONENT_RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for i, (name, run) in enumerate(runs.items()):
        write_run(run, folder / f"{i}.run.json")
        index[f"{i}.run.json"] = name
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def train_fusion(
    names: Sequence[str],
    candidates: CandidateSet,
    objective: Objective,
    out: str | Path,
    *,
    normalization: str = "minmax",
    step: float = DEFAULT_STEP,
    options: LoadOptions | None = None,
    runs: Mapping[str, Run] | None = None,
    progress: bool = False,
    metadata: dict[str, Any] | None = None,
) -> FusionConfig:
    """Fit the weights of ``names`` on every query of ``candidates`` and save the fusion
    reranker to ``out`` (loadable by that path). ``runs``: component runs already made."""
    out = Path(out)
    runs = (
        runs if runs is not None else component_runs(names, candidates, options, progress=progress)
    )
    matrices = score_matrices(candidates, {n: runs[n] for n in names})
    qids = list(candidates.candidates)
    weights, value = fit_weights(matrices, qids, objective, normalization=normalization, step=step)
    fit = {"queries": len(qids), "objective_value": round(value, 6), "grid_step": step}
    config = _config(names, weights, normalization, {**(metadata or {}), **fit})
    config.save(out)
    _save_component_runs(out, {n: runs[n] for n in names})
    logger.info(
        "fusion weights %s (objective %.4f on %d queries)", config.weights, value, len(qids)
    )
    return config


@dataclass
class FusionKFold:
    """What :func:`train_fusion_kfold` wrote: the folds and the pooled run."""

    plan: FoldsPlan
    configs: list[FusionConfig]
    pooled: Run


def train_fusion_kfold(
    names: Sequence[str],
    candidates: CandidateSet,
    objective_for: Callable[[Sequence[str]], Objective],
    out: str | Path,
    *,
    folds: int = 5,
    seed: int = 0,
    normalization: str = "minmax",
    step: float = DEFAULT_STEP,
    options: LoadOptions | None = None,
    runs: Mapping[str, Run] | None = None,
    progress: bool = False,
    metadata: dict[str, Any] | None = None,
) -> FusionKFold:
    """One fusion per fold, its weights fit on the fold's training queries only
    (``objective_for(train_queries)`` builds the objective over exactly those), and the
    pooled run of every query fused by the fold that never saw it; writes ``out/fold-k``,
    ``out/folds.json`` and ``out/pooled.run.json``."""
    out = Path(out)
    split = kfold_split(list(candidates.candidates), folds, seed=seed)
    plan = FoldsPlan(
        out,
        split,
        [f"fold-{f.index}" for f in split],
        {
            "k": folds,
            "seed": seed,
            "candidates": str(candidates.path),
            "kind": "fusion",
            "components": list(names),
        },
    )
    plan.scorer_of()
    runs = (
        runs if runs is not None else component_runs(names, candidates, options, progress=progress)
    )
    matrices = score_matrices(candidates, {n: runs[n] for n in names})
    pooled: Run = {}
    configs = []
    for fold, model in zip(plan.folds, plan.models, strict=True):
        weights, value = fit_weights(
            matrices,
            list(fold.train),
            objective_for(fold.train),
            normalization=normalization,
            step=step,
        )
        fit = {
            **(metadata or {}),
            "fold": fold.index,
            "queries": len(fold.train),
            "objective_value": round(value, 6),
            "grid_step": step,
            "train_queries": list(fold.train),
            "score_queries": list(fold.test),
        }
        config = _config(names, weights, normalization, fit)
        config.save(out / model)
        configs.append(config)
        pooled.update(fused_run(matrices, list(fold.test), weights, normalization))
        logger.info("fold %d: weights %s (train objective %.4f)", fold.index, config.weights, value)
    plan.save()
    pooled = {q: pooled[q] for q in candidates.candidates}
    write_run(pooled, out / POOLED_RUN)
    _save_component_runs(out, {n: runs[n] for n in names})
    return FusionKFold(plan, configs, pooled)
