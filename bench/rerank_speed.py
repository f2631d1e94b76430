"""Reranking speed: Quarry's cross-encoder path vs ``sentence_transformers.CrossEncoder``
on the same model and the same pairs (TREC DL19 BM25 top-100), one run, side by side.

Reports pairs/s over all 43 queries x 100 candidates (Quarry: one ``score`` call per query;
CrossEncoder: ``predict`` at batch 32 and 128) and the latency of one query with 100
candidates (p50/p99 over repeats). Speed does not depend on the head's weights, so the
model is the bundled MiniLM-L6 with a fresh one-logit head, saved once as a Hugging Face
sequence-classification directory that both sides load.

    python bench/rerank_speed.py --backbone MODEL_DIR --candidates BM25_dl19.json --device cuda

``--kinds llm`` times the pointwise LLM reranker instead (zero-shot SmolLM2-135M-Instruct,
``smollm2-pointwise``; weights do not change its speed): each query's 100 candidates scored
as ONE batch of all pairs (bf16 on CUDA), pairs/s over the 43 queries and the p50/p99 latency
of one query. There is no outside baseline for it.

    python bench/rerank_speed.py --kinds llm --candidates BM25_dl19.json --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, cuda_sync, write_result


def _pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()
    cuda_sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        cuda_sync()
        out.append(time.perf_counter() - t0)
    return out


def _llm(args: argparse.Namespace) -> None:
    """The pointwise LLM: every query's candidates in one forward pass."""
    from core.datasets import load_trec_candidates
    from ranker.text.config import LLMPointwiseOptions
    from ranker.text.loaders import zero_shot
    from ranker.text.registry import LoadOptions

    cands = load_trec_candidates(args.candidates)
    queries = [
        (cands.queries[q], [h.content for h in hits][: args.limit_docs])
        for q, hits in cands.candidates.items()
    ][: args.limit_queries]
    n_pairs = sum(len(d) for _, d in queries)
    widest = max(len(d) for _, d in queries)
    # A token budget that holds all of one query's pairs at the longest prompt.
    options = LoadOptions(
        device=args.device,
        batch_tokens=widest * LLMPointwiseOptions().max_length,
        max_batch_size=widest,
    )
    rows: dict[str, dict[str, float]] = {}
    for name, scoring in (("quarry_llm", "yes-no"), ("quarry_llm_likelihood", "query-likelihood")):
        reranker = zero_shot("llm", args.llm_backbone, name, options, {"scoring": scoring})
        rows[name] = _llm_row(reranker, queries, args.repeats)
        print(name, rows[name], flush=True)
        del reranker
    suffix = "cuda" if args.device.startswith("cuda") else "cpu"
    result = {
        "what": "pointwise LLM reranking (SmolLM2-135M-Instruct): quarry_llm scores "
        "logit(yes) - logit(no), quarry_llm_likelihood the query's mean log-probability "
        "(query likelihood); DL19 BM25 top-100 pairs, one batch of all of a query's pairs",
        "pairs": n_pairs,
        "queries": len(queries),
        "candidates_per_query": widest,
        "dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
        "rows": rows,
    }
    path = write_result(f"rerank_speed_llm_{suffix}", result, out=args.out_dir)
    print(result)
    print(f"wrote {path}")


def _llm_row(reranker: Any, queries: list[tuple[str, list[str]]], repeats: int) -> dict[str, float]:
    """Pairs/s over every query (median of 3 passes) and the latency of query 0's call."""

    def run_all() -> None:
        for q, docs in queries:
            reranker.score(q, docs)

    total = statistics.median(_timed(run_all, 3))
    q0, d0 = queries[0]
    lat = _timed(lambda: reranker.score(q0, d0), repeats)
    n_pairs = sum(len(d) for _, d in queries)
    row = {
        "pairs_per_s": n_pairs / total,
        "p50_ms": _pct(lat, 0.5) * 1000,
        "p99_ms": _pct(lat, 0.99) * 1000,
    }
    return {m: round(v, 3) for m, v in row.items()}


def _cross_encoder(args: argparse.Namespace) -> None:
    """Quarry's cross-encoder path next to sentence-transformers' CrossEncoder."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.datasets import load_trec_candidates
    from ranker.text import LoadOptions, load_reranker

    cands = load_trec_candidates(args.candidates)
    queries = [
        (cands.queries[q], [h.content for h in hits]) for q, hits in cands.candidates.items()
    ]
    n_pairs = sum(len(d) for _, d in queries)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(args.backbone, num_labels=1)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(args.backbone).save_pretrained(tmp)
        quarry = load_reranker(tmp, LoadOptions(device=args.device))
        # The same model planning one padded batch per query (before plan_bucketed).
        one_pass: Any = load_reranker(tmp, LoadOptions(device=args.device))
        one_pass.batch_cost = None
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        ce = CrossEncoder(
            tmp, device=args.device, max_length=512, model_kwargs={"torch_dtype": dtype}
        )

        def quarry_all() -> None:
            for q, docs in queries:
                quarry.score(q, docs)

        def ce_all(batch: int) -> None:
            ce.predict([(q, d) for q, docs in queries for d in docs], batch_size=batch)

        rows: dict[str, dict[str, float]] = {}
        reps = 3
        t = statistics.median(_timed(quarry_all, reps))
        rows["quarry"] = {"pairs_per_s": n_pairs / t}

        def one_pass_all() -> None:
            for q, docs in queries:
                one_pass.score(q, docs)

        t = statistics.median(_timed(one_pass_all, reps))
        rows["quarry_one_pass"] = {"pairs_per_s": n_pairs / t}

        # The bulk API, as CrossEncoder.predict over all pairs: every query's pairs in shared
        # batches (ModelReranker.score_many, also what merges concurrent /v1/rerank calls).
        def quarry_bulk() -> None:
            quarry.score_many(  # type: ignore[attr-defined]
                [q for q, _ in queries], [d for _, d in queries]
            )

        t = statistics.median(_timed(quarry_bulk, reps))
        rows["quarry_bulk"] = {"pairs_per_s": n_pairs / t}
        for batch in (32, 128):
            t = statistics.median(_timed(lambda b=batch: ce_all(b), reps))
            rows[f"crossencoder_b{batch}"] = {"pairs_per_s": n_pairs / t}
        q0, d0 = queries[0]
        lat_q = _timed(lambda: quarry.score(q0, d0[:100]), args.repeats)
        lat_ce = _timed(
            lambda: ce.predict([(q0, d) for d in d0[:100]], batch_size=128), args.repeats
        )
        lat_one = _timed(lambda: one_pass.score(q0, d0[:100]), args.repeats)
        rows["quarry"].update(p50_ms=_pct(lat_q, 0.5) * 1000, p99_ms=_pct(lat_q, 0.99) * 1000)
        rows["quarry_one_pass"].update(
            p50_ms=_pct(lat_one, 0.5) * 1000, p99_ms=_pct(lat_one, 0.99) * 1000
        )
        # Over every query with 100 candidates (query 0 alone is one length profile).
        full = [(q, d[:100]) for q, d in queries if len(d) >= 100]
        for name, reranker in (("quarry", quarry), ("quarry_one_pass", one_pass)):
            per_query: list[float] = []
            for _ in range(max(1, args.repeats // 10)):
                for q, d in full:
                    per_query.extend(_timed(lambda q=q, d=d, r=reranker: r.score(q, d), 1))
            rows[name]["p50_all_queries_ms"] = _pct(per_query, 0.5) * 1000
        rows["crossencoder_b128"].update(
            p50_ms=_pct(lat_ce, 0.5) * 1000, p99_ms=_pct(lat_ce, 0.99) * 1000
        )
        # Agreement: both sides score the same model.
        a = quarry.score(q0, d0[:100])
        b = ce.predict([(q0, d) for d in d0[:100]], batch_size=128)
        import numpy as np

        corr = float(
            np.corrcoef(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0, 1]
        )
    for name, row in rows.items():
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
    suffix = "cuda" if args.device.startswith("cuda") else "cpu"
    result = {
        "what": "cross-encoder reranking, MiniLM-L6 + one-logit head, DL19 BM25 top-100 pairs",
        "pairs": n_pairs,
        "queries": len(queries),
        "rows": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()},
        "ratio_pairs_per_s_vs_crossencoder_b128": round(
            rows["quarry"]["pairs_per_s"] / rows["crossencoder_b128"]["pairs_per_s"], 2
        ),
        "ratio_bulk_pairs_per_s_vs_crossencoder_b128": round(
            rows["quarry_bulk"]["pairs_per_s"] / rows["crossencoder_b128"]["pairs_per_s"], 2
        ),
        "score_correlation_quarry_vs_crossencoder": round(corr, 5),
        "goals": {
            "3x_crossencoder_b128_per_query_calls": rows["quarry"]["pairs_per_s"]
            >= 3 * rows["crossencoder_b128"]["pairs_per_s"],
            "3x_crossencoder_b128_bulk": rows["quarry_bulk"]["pairs_per_s"]
            >= 3 * rows["crossencoder_b128"]["pairs_per_s"],
            "p50_under_10ms_for_100": rows["quarry"]["p50_ms"] <= 10.0,
        },
    }
    path = write_result(f"rerank_speed_{suffix}", result, out=args.out_dir)
    print(result)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="cross-encoder", help="cross-encoder and/or llm")
    ap.add_argument("--backbone", help="encoder directory (the cross-encoder rows)")
    ap.add_argument("--llm-backbone", default="smollm2", help="packaged LLM or a directory")
    ap.add_argument("--candidates", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--limit-queries", type=int, help="llm smoke runs: the first N queries")
    ap.add_argument("--limit-docs", type=int, default=100, help="llm: candidates per query")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - {"cross-encoder", "llm"})
    if unknown:
        ap.error(f"Invalid kinds {unknown}. Valid kinds: cross-encoder, llm")
    if "llm" in kinds:
        _llm(args)
    if "cross-encoder" in kinds:
        if not args.backbone:
            ap.error("--backbone is required for the cross-encoder rows")
        _cross_encoder(args)


if __name__ == "__main__":
    main()
