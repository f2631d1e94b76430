"""Reranker quality runs, made where the GPU is: train each kind on SciFact train, rerank
SciFact test's BM25 and hybrid top-100, and run k-fold cross-validation by query on TREC
DL19 (each fold started from the SciFact model, each query scored only by the fold model
that never trained on it); zero-shot rerankers score the same candidate lists. Writes run
files ``{qid: {docid: score}}``; the metrics and the significance tests are computed
afterwards with ``quarry eval run`` / ``quarry eval compare``.

    python bench/rerank_quality.py --data .rerank-data/device --backbone MODEL_DIR \\
        --kinds cross-encoder,late-interaction,knrm --out OUT
    python bench/rerank_quality.py --data .rerank-data/device --kinds llm \\
        --zero-shot smollm2-pointwise --out OUT

``--data`` is what ``bench/rerank_data.py --bundle`` writes: ``scifact-passages.json.gz``
(``{docid: passage text}`` as ingest composes them),
``scifact-test-{lexical,hybrid}100.run.json.gz`` (first-stage runs: ``{"queries", "run":
{qid: [[docid, score], ...]}}``),
``scifact-train-*.jsonl.gz`` (examples with BM25 negatives, as passage ids or as texts) and
``dl19/`` (``BM25_dl19.json[.gz]`` + the qrels).

Training goes through :mod:`ranker.text.train` in this process (the same calls ``quarry train
reranker`` makes), so the GPU host needs only the model stack, pydantic(-settings), dotenv and
gguf, not the service layer (SQLAlchemy, faiss, bm25s). Every piece is skipped with
``--reuse`` when its output exists, so a run cut by a time limit continues where it stopped.

The LLM kind (SmolLM2-135M-Instruct, score = logit(yes) - logit(no)) trains a LoRA adapter
(r and alpha: :class:`ranker.text.train.trainer.RerankTrainConfig`'s defaults, 16 and 32) in
bf16 autocast on CUDA; it is scored in bf16. Its GGUF is dequantised once into a Hugging Face
directory under ``--work`` so that later loads skip the dequantisation. Step counts:
:data:`STEPS` (see the comment there for the time estimate).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from core.datasets import CandidateSet
    from embedder.train.data import TrainExample
    from ranker.text.registry import LoadOptions
    from ranker.text.train.trainer import RerankTrainConfig

#: SciFact-train steps (``--batch-size`` 32 queries, 1 positive + 7 negatives each).
#: LLM: 200 steps = 7 epochs of the 919 examples. Estimate for an H200: a step is 256
#: prompts padded to <= 512 tokens (~130k tokens); forward + LoRA backward is ~4 x 135M x
#: 130k = 7e13 FLOP, ~0.7-1 s at the 70-100 TFLOP/s a 576-wide model reaches in bf16, so
#: 200 steps take ~2.5-3.5 minutes (under the ~4 minutes budgeted).
STEPS = {"cross-encoder": 600, "late-interaction": 600, "knrm": 600, "llm": 200}
#: DL19 fold steps (``--fold-batch-size`` 16); LLM: 5 folds x 80 steps x ~0.4 s ~ 3 minutes.
FOLD_STEPS = {"cross-encoder": 150, "late-interaction": 150, "knrm": 150, "llm": 80}
#: Examples per forward pass (exact gradient accumulation): 8 LLM groups are 64 prompts of
#: up to 512 tokens, whose activations over 30 layers stay well inside an H200.
MICRO_BATCH: dict[str, int] = {"llm": 8}
#: Checkpoint every N steps (what ``--reuse`` resumes from after a time limit; 0: never).
CHECKPOINT_EVERY: dict[str, int] = {"llm": 50}
#: The LLM's packaged backbone (dequantised once, see :func:`_plain_llm`).
LLM_PACKAGED = "smollm2"
#: The packaged zero-shot LLM rerankers and their LLM-kind options (loaded here from the
#: dequantised directory of :func:`_plain_llm`, the same weights).
ZERO_SHOT_LLMS: dict[str, dict[str, Any]] = {
    "smollm2-pointwise": {},
    "smollm2-likelihood": {"scoring": "query-likelihood"},
}


def _log(message: str) -> None:
    print(message, flush=True)


def _free() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- data ---------------------------------------------------------------------------------


def _first(items: list[str], limit: int | None) -> list[str]:
    return items if limit is None else items[:limit]


def _scifact_candidates(
    data: Path, name: str, corpus: dict[str, str], limit: int | None, depth: int | None
) -> CandidateSet:
    from core.datasets import Candidate, CandidateSet
    from core.jsonl import read_json

    path = next(p for p in sorted(data.glob(f"scifact-test-{name}100.run.json*")))
    first = read_json(path, "First-stage run")
    qids = _first(list(first["run"]), limit)
    return CandidateSet(
        path=Path(f"scifact-test-{name}100"),
        queries={q: first["queries"][q] for q in qids},
        candidates={
            q: [
                Candidate(docid=d, score=float(s), rank=r, content=corpus[d])
                for r, (d, s) in enumerate(first["run"][q][:depth], 1)
            ]
            for q in qids
        },
    )


def _limited(cands: CandidateSet, limit: int | None, depth: int | None) -> CandidateSet:
    from core.datasets import CandidateSet

    qids = _first(list(cands.candidates), limit)
    return CandidateSet(
        cands.path,
        {q: cands.queries[q] for q in qids},
        {q: cands.candidates[q][:depth] for q in qids},
    )


def _train_examples(data: Path, corpus: dict[str, str], limit: int | None) -> list[TrainExample]:
    """SciFact train examples: JSON lines of texts, or of corpus ids (``positive_id``,
    ``negative_ids``) expanded here; with ``limit``, those of the first ``limit`` queries."""
    from core.jsonl import iter_jsonl
    from embedder.train.data import TrainExample

    path = sorted(data.glob("scifact-train-*.jsonl*"))[0]
    examples: list[TrainExample] = []
    queries: list[str] = []
    for _, rec in iter_jsonl(path, what="Training data"):
        if rec["query"] not in queries:
            if limit is not None and len(queries) >= limit:
                break
            queries.append(rec["query"])
        if "positive_id" in rec:
            negatives = tuple(corpus[d] for d in rec["negative_ids"])
            examples.append(TrainExample(rec["query"], corpus[rec["positive_id"]], negatives))
        else:
            examples.append(TrainExample(rec["query"], rec["positive"], tuple(rec["negatives"])))
    _log(f"{len(examples)} SciFact training examples ({len(queries)} queries) from {path.name}")
    return examples


# --- steps --------------------------------------------------------------------------------


def _plain_llm(work: Path) -> str:
    """SmolLM2's GGUF dequantised once into a Hugging Face directory (float32 weights, the
    GGUF's tokenizer): every later load (zero-shot, training, each fold's ``--init``) reads
    safetensors instead of dequantising again. The weights are the packaged reranker's."""
    target = work / "smollm2-hf"
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM

    from ranker.text.backbones import load_pretrained, load_tokenizer, resolve_backbone

    resolved = resolve_backbone(LLM_PACKAGED)
    partial = work / "smollm2-hf.partial"
    shutil.rmtree(partial, ignore_errors=True)
    load_pretrained(AutoModelForCausalLM, resolved).save_pretrained(partial)
    load_tokenizer(resolved).save_pretrained(partial)
    partial.rename(target)
    return str(target)


def _zero_shot(name: str, work: Path, options: LoadOptions) -> Any:
    from ranker.text.registry import load_reranker

    if name not in ZERO_SHOT_LLMS:
        return load_reranker(name, options)
    from ranker.text.loaders import zero_shot

    return zero_shot("llm", _plain_llm(work), name, options, ZERO_SHOT_LLMS[name])


def _score(reranker: Any, cands: CandidateSet, path: Path) -> None:
    from ranker.text.train.kfold import score_candidates, write_run

    t0 = time.perf_counter()
    write_run(score_candidates(reranker, cands), path)
    pairs = sum(len(h) for h in cands.candidates.values())
    took = time.perf_counter() - t0
    _log(f"  {path.name}: {pairs} pairs in {took:.0f}s ({pairs / max(took, 1e-9):.0f} pairs/s)")


def _train(config: RerankTrainConfig, examples: list[TrainExample], out: Path, reuse: bool) -> None:
    from ranker.text.train.trainer import train_reranker

    if reuse and (out / "training.json").is_file():
        _log(f"  kept {out}")
        return
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    # With --reuse, a run cut short continues from its latest checkpoint.
    result = train_reranker(config, examples, out, resume=reuse, progress=False)
    _log(
        f"  trained {out.name}: {result.step} steps in {time.perf_counter() - t0:.0f}s, "
        f"final loss {result.final_loss:.4f}"
    )


class Job:
    """One driver run: its inputs (loaded once), where it writes, and each step."""

    def __init__(self, args: argparse.Namespace) -> None:
        from core.datasets import load_trec_candidates, load_trec_qrels
        from core.jsonl import read_json
        from ranker.text.registry import LoadOptions

        self.args = args
        self.out: Path = args.out
        self.work: Path = args.work
        self.reuse: bool = args.reuse
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.load = LoadOptions(
            device=args.device, batch_tokens=args.batch_tokens, max_batch_size=256
        )
        limit, depth = args.limit_queries, args.limit_docs
        self.corpus: dict[str, str] = read_json(args.data / "scifact-passages.json.gz", "Passages")
        self.sets = {
            n: _scifact_candidates(args.data, n, self.corpus, limit, depth)
            for n in ("lexical", "hybrid")
        }
        dl19 = args.data / "dl19"
        dl_limit = None if limit is None else max(limit, args.folds)
        self.dl19 = _limited(
            load_trec_candidates(sorted(dl19.glob("BM25_dl19.json*"))[0]), dl_limit, depth
        )
        self.qrels = load_trec_qrels(sorted(dl19.glob("qrels.dl19-passage.txt*"))[0])
        self.timings = self.out / "timings.json"

    def timed(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)``; add its seconds to ``key``'s (a run continued with ``--reuse``
        sums its calls; pieces kept from an earlier call cost next to nothing)."""
        t0 = time.perf_counter()
        fn(*args)
        took = time.perf_counter() - t0
        done = json.loads(self.timings.read_text()) if self.timings.is_file() else {}
        done[key] = round(done.get(key, 0.0) + took, 1)
        self.timings.write_text(json.dumps(done, indent=1))
        _log(f"{key}: {took:.1f}s")

    def score_all(self, make: Callable[[], Any], tag: str, dl_tag: str) -> None:
        """SciFact test (both first stages) and DL19 BM25 top-100 reranked by the reranker
        ``make()`` loads (not loaded when ``--reuse`` finds every run already written)."""
        todo = [
            (cands, self.out / f"scifact-{set_name}100-{tag}.run.json")
            for set_name, cands in self.sets.items()
        ]
        todo.append((self.dl19, self.out / f"dl19-bm25-{dl_tag}.run.json"))
        if self.reuse:
            for _, path in todo:
                if path.is_file():
                    _log(f"  kept {path.name}")
            todo = [(c, p) for c, p in todo if not p.is_file()]
        if not todo:
            return
        reranker = make()
        for cands, path in todo:
            _score(reranker, cands, path)
        del reranker
        _free()

    def zero_shot(self, name: str) -> None:
        self.score_all(lambda: _zero_shot(name, self.work, self.load), name, name)

    def config(self, kind: str, **fields: Any) -> RerankTrainConfig:
        from ranker.text.train.trainer import RerankTrainConfig

        return RerankTrainConfig(
            kind=kind,
            micro_batch=self.args.micro_batch or MICRO_BATCH.get(kind),
            checkpoint_every=CHECKPOINT_EVERY.get(kind, 0),
            keep_checkpoints=1,
            device=self.args.device,
            **fields,
        )

    def scifact(self, kind: str, examples: list[TrainExample], sci: Path) -> None:
        """Train ``kind`` on SciFact train; rerank SciFact test and (transfer) DL19."""
        from ranker.text.registry import load_reranker

        args = self.args
        backbone = _plain_llm(self.work) if kind == "llm" else args.backbone
        steps = args.steps or max(1, int(STEPS[kind] * args.scale))
        batch = min(args.batch_size, len(examples))
        options = {} if args.max_length is None else {"max_length": args.max_length}
        config = self.config(
            kind, backbone=backbone, options=options, steps=steps, batch_size=batch
        )
        _train(config, examples, sci, self.reuse)
        shutil.copy(sci / "training.json", self.out / f"{kind}-scifact-training.json")
        # DL19 with the SciFact model, never trained on DL19: the transfer row.
        self.score_all(lambda: load_reranker(str(sci), self.load), kind, f"{kind}-scifact")

    def kfold(self, kind: str, sci: Path) -> None:
        """DL19 k-fold CV by query, every fold started from the SciFact model ``sci``."""
        from ranker.text.train.kfold import score_kfold, train_kfold, write_run

        args = self.args
        dl = self.work / f"{kind}-dl19"
        pooled = self.out / f"dl19-bm25-{kind}-kfold.run.json"
        if self.reuse and pooled.is_file():
            _log(f"  kept {pooled.name}")
            return
        if not self.reuse:
            shutil.rmtree(dl, ignore_errors=True)
        steps = args.fold_steps or max(1, int(FOLD_STEPS[kind] * args.scale))
        config = self.config(kind, init=str(sci), steps=steps, batch_size=args.fold_batch_size)
        result = train_kfold(
            config, self.dl19, self.qrels, dl, folds=args.folds, resume=self.reuse, progress=False
        )
        _log(f"  fold losses {[round(x, 4) for x in result.final_losses]}")
        write_run(score_kfold(dl, self.dl19, options=self.load), pooled)
        shutil.copy(dl / "folds.json", self.out / f"dl19-{kind}-folds.json")
        _free()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--backbone", help="encoder directory for the encoder kinds")
    ap.add_argument("--kinds", default="cross-encoder,late-interaction,knrm")
    ap.add_argument("--zero-shot", default="", help="packaged zero-shot rerankers, scored first")
    ap.add_argument("--folds", type=int, default=5, help="DL19 k-fold CV (0: skip it)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rerank-work"))
    ap.add_argument("--steps", type=int, help="SciFact steps (default per kind: STEPS)")
    ap.add_argument("--fold-steps", type=int, help="DL19 fold steps (default: FOLD_STEPS)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the default steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fold-batch-size", type=int, default=16)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-tokens", type=int, default=65_536, help="scoring token budget")
    ap.add_argument("--limit-queries", type=int, help="dry runs: the first N queries per set")
    ap.add_argument("--limit-docs", type=int, help="dry runs: the top N candidates per query")
    ap.add_argument("--reuse", action="store_true", help="keep models and runs already made")
    ap.add_argument("--micro-batch", type=int, help="examples per forward pass (default per kind)")
    ap.add_argument("--max-length", type=int, help="dry runs: token limit of the trained models")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k != "llm" for k in kinds) and not args.backbone:
        ap.error("--backbone is required for the encoder kinds")

    job = Job(args)
    for name in [z for z in args.zero_shot.split(",") if z]:
        job.timed(name, job.zero_shot, name)
    examples = _train_examples(args.data, job.corpus, args.limit_queries) if kinds else []
    for kind in kinds:
        sci = args.work / f"{kind}-scifact"
        job.timed(f"{kind}-scifact", job.scifact, kind, examples, sci)
        if args.folds >= 2:
            job.timed(f"{kind}-dl19-kfold", job.kfold, kind, sci)


if __name__ == "__main__":
    main()
