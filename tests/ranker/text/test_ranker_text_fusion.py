"""Score fusion: normalisation, the weight grid, fitting on training queries only, saving and
loading by path, the k-fold pooled run, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from core.datasets import Candidate, CandidateSet, load_trec_candidates, load_trec_qrels
from core.errors import InvalidRequest
from evaluation.metrics import evaluate_run
from ranker.text import KINDS, LoadOptions, load_reranker
from ranker.text.bi_encoder import BiEncoderReranker
from ranker.text.config import CONFIG_FILE
from ranker.text.fusion import (
    FIRST_STAGE,
    FusionComponent,
    FusionConfig,
    FusionReranker,
    first_stage_scores,
    fuse,
    normalize,
)
from ranker.text.model import create_model
from ranker.text.train.fusion import (
    component_runs,
    fit_weights,
    score_matrices,
    train_fusion,
    train_fusion_kfold,
    weight_grid,
)
from ranker.text.train.kfold import FoldsPlan, score_candidates, score_kfold
from tests.ranker.text.test_ranker_text_kfold import write_trec_set

CPU = LoadOptions(device="cpu")


class _Constant:
    """A stand-in component: fixed scores by document text."""

    kind = "stub"

    def __init__(self, name: str, by_text: Mapping[str, float]) -> None:
        self.name = name
        self.by_text = by_text

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        return np.asarray([self.by_text.get(d, 0.0) for d in documents], dtype=np.float32)


def _ndcg_objective(qrels: Mapping[str, Mapping[str, int]]) -> Any:
    def objective_for(qids: Sequence[str]) -> Any:
        judged = {q: dict(qrels[q]) for q in qids}
        return lambda run: evaluate_run(judged, run, ["ndcg@10"]).aggregate["ndcg@10"]

    return objective_for


def test_normalisation_and_fusion_arithmetic() -> None:
    np.testing.assert_allclose(normalize(np.array([2.0, 4.0, 3.0]), "minmax"), [0, 1, 0.5])
    z = normalize(np.array([1.0, 2.0, 3.0]), "zscore")
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    assert not normalize(np.array([5.0, 5.0]), "minmax").any()  # no order, no say
    with pytest.raises(InvalidRequest, match="Valid normalizations: minmax, zscore"):
        normalize(np.array([1.0]), "rank")
    fused = fuse(np.array([[0.0, 10.0], [3.0, 1.0]]), [0.25, 0.75], "minmax")
    np.testing.assert_allclose(fused, [0.75, 0.25])
    np.testing.assert_allclose(first_stage_scores(3), [1 / 61, 1 / 62, 1 / 63], rtol=1e-6)


def test_weight_grid_covers_the_simplex() -> None:
    grid = weight_grid(3, 0.5)
    assert grid.shape == (6, 3)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert len(weight_grid(3, 0.1)) == 66
    with pytest.raises(InvalidRequest, match="must divide 1"):
        weight_grid(2, 0.3)


def test_fit_uses_only_the_queries_it_is_given(tmp_path: Path) -> None:
    cands_path, qrels_path = write_trec_set(tmp_path)
    cands, qrels = load_trec_candidates(cands_path), load_trec_qrels(qrels_path)
    oracle = {
        q: {h.docid: float(qrels[q].get(h.docid, 0)) for h in hs}
        for q, hs in cands.candidates.items()
    }
    runs = {FIRST_STAGE: component_runs([FIRST_STAGE], cands)[FIRST_STAGE], "oracle": oracle}
    matrices = score_matrices(cands, runs)
    seen: list[set[str]] = []

    def objective(run: Mapping[str, Mapping[str, float]]) -> float:
        seen.append(set(run))
        return _ndcg_objective(qrels)(list(run))(run)

    weights, value = fit_weights(matrices, ["q1", "q2", "q3"], objective, step=0.25)
    assert all(s == {"q1", "q2", "q3"} for s in seen) and len(seen) == 5
    assert weights[1] >= 0.75 and value == pytest.approx(1.0)  # the oracle wins


def test_saved_fusion_loads_by_path_and_scores_as_fit(tmp_path: Path, tiny_bert: Path) -> None:
    li = create_model("late-interaction", str(tiny_bert), {"dim": 8}).save(tmp_path / "li")
    config = FusionConfig(
        (FusionComponent(FIRST_STAGE, 0.4), FusionComponent(str(li), 0.6)), "minmax"
    )
    out = config.save(tmp_path / "fusion")
    assert json.loads((out / CONFIG_FILE).read_text())["kind"] == "fusion"
    assert "fusion" in KINDS
    reranker = load_reranker(str(out), CPU)
    assert isinstance(reranker, FusionReranker) and reranker.kind == "fusion"
    docs = ["lava flows from the crater", "knead the dough", "the ocean water"]
    raw = np.stack([first_stage_scores(3), load_reranker(str(li), CPU).score("volcano lava", docs)])
    np.testing.assert_allclose(
        reranker.score("volcano lava", docs), fuse(raw, [0.4, 0.6], "minmax"), rtol=1e-5
    )
    assert reranker.score("q", []).shape == (0,)
    assert FusionConfig.load(out) == config
    with pytest.raises(InvalidRequest, match="repeat a name"):
        FusionConfig((FusionComponent("a", 1.0), FusionComponent("a", 0.0)))


def test_kfold_fusion_never_fits_on_a_scored_query(tmp_path: Path, tiny_bert: Path) -> None:
    cands_path, qrels_path = write_trec_set(tmp_path / "set")
    cands, qrels = load_trec_candidates(cands_path), load_trec_qrels(qrels_path)
    li = create_model("late-interaction", str(tiny_bert), {"dim": 8}).save(tmp_path / "li")
    names = [FIRST_STAGE, str(li)]
    fitted_on: list[set[str]] = []

    def objective_for(qids: Sequence[str]) -> Any:
        inner = _ndcg_objective(qrels)(qids)

        def objective(run: Mapping[str, Mapping[str, float]]) -> float:
            fitted_on.append(set(run))
            return float(inner(run))

        return objective

    result = train_fusion_kfold(
        names, cands, objective_for, tmp_path / "kf", folds=3, step=0.5, options=CPU
    )
    plan = FoldsPlan.load(tmp_path / "kf")
    plan.scorer_of()  # every query scored by exactly one fold, none it was fit on
    # Every objective call saw exactly one fold's training queries, never its scored ones.
    assert fitted_on and all(any(seen == set(f.train) for f in plan.folds) for seen in fitted_on)
    for fold, config in zip(plan.folds, result.configs, strict=True):
        assert config.fit["train_queries"] == list(fold.train)
    assert set(result.pooled) == set(cands.candidates)
    # The saved fold models, loaded by path, give the pooled run again.
    again = score_kfold(tmp_path / "kf", cands, options=CPU)
    for qid, ranked in result.pooled.items():
        assert list(ranked) == list(again[qid])
        np.testing.assert_allclose(list(ranked.values()), list(again[qid].values()), rtol=1e-5)


def test_plain_fit_saves_a_loadable_fusion(tmp_path: Path) -> None:
    cands_path, qrels_path = write_trec_set(tmp_path / "set")
    cands, qrels = load_trec_candidates(cands_path), load_trec_qrels(qrels_path)
    oracle = {
        q: {h.docid: float(qrels[q].get(h.docid, 0)) for h in hs}
        for q, hs in cands.candidates.items()
    }
    runs = {FIRST_STAGE: component_runs([FIRST_STAGE], cands)[FIRST_STAGE], "stub": oracle}
    config = train_fusion(
        [FIRST_STAGE, "stub"],
        cands,
        _ndcg_objective(qrels)(list(cands.candidates)),
        tmp_path / "f",
        runs=runs,
        step=0.5,
    )
    assert config.weights == [0.0, 1.0] and config.fit["queries"] == len(cands.candidates)
    assert (tmp_path / "f" / "component-runs" / "index.json").is_file()


def test_bi_encoder_stored_vectors_score_the_same() -> None:
    class Embedder:
        def embed(self, texts: list[str], kind: str, normalize: bool) -> np.ndarray:
            v = np.asarray([[len(t), t.count("a") + 1.0, 1.0] for t in texts], dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    reranker = BiEncoderReranker(Embedder(), "embedder:stub")  # type: ignore[arg-type]
    docs = ["a banana", "cherry", "a", "apple pie"]
    stored = list(reranker.encode_documents(docs))
    direct = reranker.score("an apple", docs)
    np.testing.assert_allclose(direct, reranker.score_encoded("an apple", stored), rtol=1e-6)
    # Passages repeated across queries are encoded once by score_candidates; same scores.
    hits = [Candidate(docid=f"d{i}", score=0.0, rank=i + 1, content=d) for i, d in enumerate(docs)]
    cands = CandidateSet(Path("x"), {"q1": "an apple", "q2": "an apple"}, {"q1": hits, "q2": hits})
    run = score_candidates(reranker, cands)
    assert run["q1"] == run["q2"]
    np.testing.assert_allclose([run["q1"][f"d{i}"] for i in range(4)], direct, rtol=1e-6)


def test_cli_fits_fusion_folds(tmp_path: Path, tiny_bert: Path) -> None:
    from cli.main import app

    cands_path, qrels_path = write_trec_set(tmp_path / "set")
    li = create_model("late-interaction", str(tiny_bert), {"dim": 8}).save(tmp_path / "li")
    out = tmp_path / "fusion"
    result = CliRunner().invoke(
        app,
        [
            "train", "reranker", "--kind", "fusion", "--components", f"first-stage,{li}",
            "--candidates", str(cands_path), "--qrels", str(qrels_path), "--folds", "3",
            "--option", "step=0.5", "--device", "cpu", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "pooled.run.json").is_file() and (out / "folds.json").is_file()
    assert load_reranker(str(out / "fold-0"), CPU).kind == "fusion"
    # The same fit from the component run saved by the first one (not scored again).
    index = json.loads((out / "component-runs" / "index.json").read_text())
    saved = out / "component-runs" / next(f for f, n in index.items() if n == str(li))
    again = tmp_path / "fusion-again"
    common = [
        "train", "reranker", "--kind", "fusion", "--components", f"first-stage,{li}",
        "--candidates", str(cands_path), "--qrels", str(qrels_path), "--folds", "3",
        "--option", "step=0.5", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(
        app, [*common, "--component-run", f"{li}={saved}", "--out", str(again)]
    )
    assert result.exit_code == 0, result.output
    pooled = json.loads((out / "pooled.run.json").read_text())
    assert json.loads((again / "pooled.run.json").read_text()) == pooled
    for spec, message in [
        (f"{li}", "takes NAME=FILE"),
        (f"other={saved}", "not one of --components"),
        (f"{li}={tmp_path / 'missing.json'}", "no such file"),
    ]:
        bad = CliRunner().invoke(
            app, [*common, "--component-run", spec, "--out", str(tmp_path / "y")]
        )
        assert bad.exit_code != 0 and message in bad.output, bad.output
    bad = CliRunner().invoke(
        app, ["train", "reranker", "--kind", "fusion", "--candidates", str(cands_path),
              "--qrels", str(qrels_path), "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert bad.exit_code != 0 and "needs --components" in bad.output
