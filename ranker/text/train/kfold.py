"""k-fold cross-validation by query, for judged sets too small to spare a test split.

TREC DL19 has 43 judged queries. To report a trained reranker on all of them, the queries
are split into k folds (:func:`~ranker.text.train.splits.kfold_split`); fold k's model is
trained on the other folds' queries only, and scores fold k's. :func:`train_kfold` writes::

    out/fold-0/ ... out/fold-{k-1}/     one reranker directory per fold
    out/folds.json                      per fold: its model, "train_queries" (the queries it
                                        must never score) and "score_queries" (those it does)

and :func:`score_kfold` turns the fold models and a candidates file into ONE pooled run in
which every query was scored by the only model that never trained on it; it refuses a
``folds.json`` that would break that. ``init`` starts every fold from the same trained model
(e.g. one trained on SciFact), which must not have seen the set's queries either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.datasets import CandidateSet, load_trec_candidates, load_trec_qrels
from core.errors import InvalidRequest
from ranker.text.base import TextReranker
from ranker.text.registry import LoadOptions, load_reranker
from ranker.text.train.splits import Fold, kfold_split

if TYPE_CHECKING:
    from ranker.text.train.trainer import RerankTrainConfig

logger = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"
#: The pooled run :func:`train_kfold`'s caller may write next to the folds.
POOLED_RUN = "pooled.run.json"

Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class FoldsPlan:
    """What ``folds.json`` says: each fold's model directory and its two query sets."""

    directory: Path
    folds: list[Fold]
    models: list[str]
    meta: dict[str, Any]

    def scorer_of(self) -> dict[str, int]:
        """``{query id: fold index}`` for every query some fold scores.

        Raises :class:`InvalidRequest` if a fold would score a query it trained on, or if a
        query is scored by two folds.
        """
        owner: dict[str, int] = {}
        for fold in self.folds:
            leaked = sorted(set(fold.test) & set(fold.train))
            if leaked:
                raise InvalidRequest(
                    f"Fold {fold.index} of {self.directory} scores queries it was trained on: "
                    f"{', '.join(leaked[:5])}"
                )
            for qid in fold.test:
                if qid in owner:
                    raise InvalidRequest(
                        f"Query {qid} is scored by folds {owner[qid]} and {fold.index}"
                    )
                owner[qid] = fold.index
        return owner

    def save(self) -> Path:
        """Write ``folds.json``."""
        data = {
            **self.meta,
            "folds": [
                {
                    "fold": f.index,
                    "model": m,
                    "train_queries": list(f.train),
                    "score_queries": list(f.test),
                }
                for f, m in zip(self.folds, self.models, strict=True)
            ],
        }
        path = self.directory / FOLDS_FILE
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FoldsPlan:
        """Read ``directory/folds.json``."""
        directory = Path(directory)
        path = directory / FOLDS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data["folds"]
            folds = [
                Fold(
                    int(e["fold"]),
                    tuple(map(str, e["train_queries"])),
                    tuple(map(str, e["score_queries"])),
                )
                for e in entries
            ]
            models = [str(e["model"]) for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{path} is not a readable folds file: {exc!r}") from exc
        meta = {k: v for k, v in data.items() if k != "folds"}
        return cls(directory, folds, models, meta)


def score_candidates(
    reranker: TextReranker,
    candidates: CandidateSet,
    query_ids: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> Run:
    """Rerank each query's candidates: ``{qid: {docid: score}}`` best first (tied scores keep
    the first-stage order; a docid listed twice keeps its first score).

    A reranker that can store document vectors (late interaction: ``encode_documents`` and
    ``score_encoded``) encodes each distinct passage once when passages recur across queries
    (a BEIR corpus's BM25 lists overlap heavily); the scores are the same.
    """
    from tqdm.auto import tqdm

    qids = list(candidates.candidates) if query_ids is None else list(query_ids)
    texts = [h.content for q in qids for h in candidates.candidates[q]]
    distinct = list(dict.fromkeys(texts))
    encode = getattr(reranker, "encode_documents", None)
    score_encoded = getattr(reranker, "score_encoded", None)
    stored: dict[str, Any] | None = None
    if encode is not None and score_encoded is not None and len(distinct) < 0.8 * len(texts):
        logger.info("encoding %d distinct passages of %d once", len(distinct), len(texts))
        stored = dict(zip(distinct, encode(distinct), strict=True))
    run: Run = {}
    for qid in tqdm(qids, desc=f"rerank ({reranker.name})", unit="query", disable=not progress):
        hits = candidates.candidates[qid]
        query = candidates.queries[qid]
        if stored is not None:
            assert score_encoded is not None
            scores = score_encoded(query, [stored[h.content] for h in hits])
        else:
            scores = reranker.score(query, [h.content for h in hits])
        ranked: dict[str, float] = {}
        for i in np.argsort(-scores, kind="stable"):
            ranked.setdefault(hits[i].docid, float(scores[i]))
        run[qid] = ranked
    return run


def write_run(run: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Write a run as Quarry's JSON ``{qid: {docid: score}}`` (what ``quarry eval run`` and
    :func:`core.datasets.load_run` read), documents in ranked order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    return path


def score_kfold(
    directory: str | Path,
    candidates: CandidateSet | str | Path,
    *,
    options: LoadOptions | None = None,
    progress: bool = False,
) -> Run:
    """One pooled run over ``candidates``: each query scored by the fold model that never
    trained on it (see the module docstring). Every query of ``candidates`` must be some
    fold's to score."""
    plan = FoldsPlan.load(directory)
    owner = plan.scorer_of()
    cands = (
        candidates
        if isinstance(candidates, CandidateSet)
        else load_trec_candidates(Path(candidates))
    )
    unowned = sorted(set(cands.candidates) - set(owner))
    if unowned:
        raise InvalidRequest(
            f"{len(unowned)} queries of {cands.path.name} are scored by no fold of "
            f"{plan.directory} (e.g. {', '.join(unowned[:5])}); these folds were made for "
            "another query set"
        )
    run: Run = {}
    for fold, model in zip(plan.folds, plan.models, strict=True):
        qids = [q for q in cands.candidates if owner[q] == fold.index]
        if not qids:
            continue
        reranker = load_reranker(str(plan.directory / model), options)
        run.update(score_candidates(reranker, cands, qids, progress=progress))
        del reranker
    return {q: run[q] for q in cands.candidates}


@dataclass
class KFoldResult:
    """Where :func:`train_kfold` wrote the folds, and each fold's final loss."""

    directory: Path
    plan: FoldsPlan
    final_losses: list[float]


def train_kfold(
    config: RerankTrainConfig,
    candidates: CandidateSet | str | Path,
    qrels: Mapping[str, Mapping[str, int]] | str | Path,
    out: str | Path,
    *,
    folds: int = 5,
    min_grade: int = 2,
    max_negatives: int | None = None,
    split_seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> KFoldResult:
    """Train one reranker per fold of the candidates' queries (``config``: a
    :class:`~ranker.text.train.trainer.RerankTrainConfig`) into ``out/fold-k`` and write
    ``out/folds.json``. Fold k's examples come only from its training queries
    (:func:`ranker.text.train.examples.examples_from_candidates`); every query of the
    candidates file is in exactly one fold's scoring set (queries without judgements simply
    give no examples). ``split_seed`` defaults to the config's seed. Folds already trained
    are kept when ``resume`` is set."""
    from ranker.text.train import examples as rerank_examples
    from ranker.text.train.trainer import RerankerTrainer

    out = Path(out)
    cands = (
        candidates
        if isinstance(candidates, CandidateSet)
        else load_trec_candidates(Path(candidates))
    )
    judgements = qrels if isinstance(qrels, Mapping) else load_trec_qrels(Path(qrels))
    seed = config.seed if split_seed is None else split_seed
    split = kfold_split(list(cands.candidates), folds, seed=seed)
    plan = FoldsPlan(
        out,
        split,
        [f"fold-{f.index}" for f in split],
        {
            "k": folds,
            "seed": seed,
            "candidates": str(cands.path.resolve()),
            "qrels": str(Path(qrels).resolve()) if not isinstance(qrels, Mapping) else None,
            "min_grade": min_grade,
            "init": config.init,
        },
    )
    plan.scorer_of()  # the split's own guarantee, checked before any training
    if (out / FOLDS_FILE).exists() and not resume:
        raise InvalidRequest(f"{out} already holds folds; resume them or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    plan.save()
    losses: list[float] = []
    for fold, model in zip(plan.folds, plan.models, strict=True):
        target = out / model
        if resume and (target / "training.json").is_file():
            logger.info("fold %d already trained; kept", fold.index)
            record = json.loads((target / "training.json").read_text())
            losses.append(float(record.get("final_loss") or float("nan")))
            continue
        examples = rerank_examples.examples_from_candidates(
            cands,
            judgements,
            min_grade=min_grade,
            max_negatives=max_negatives,
            query_ids=fold.train,
        )
        trained_on = sorted({q for q in fold.train if q in judgements})
        logger.info(
            "fold %d/%d: %d examples from %d training queries; scores %d queries",
            fold.index + 1,
            folds,
            len(examples),
            len(trained_on),
            len(fold.test),
        )
        fold_config = replace(config, batch_size=min(config.batch_size, len(examples)))
        trainer = RerankerTrainer(
            fold_config,
            examples,
            target,
            resume=resume,
            progress=progress,
            metadata={
                **(metadata or {}),
                "fold": fold.index,
                "train_queries": list(fold.train),
                "score_queries": list(fold.test),
            },
        )
        result = trainer.fit()
        losses.append(result.final_loss)
        del trainer
    return KFoldResult(out, plan, losses)
