"""Where one rerank call's time goes: tokenising (``prepare``) vs the forward passes, for the
cross-encoder path on 100 DL19 BM25 candidates, at a few token budgets.

    python bench/rerank_parts.py --backbone MODEL_DIR --candidates BM25_dl19.json --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import cuda_sync


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        cuda_sync()
        t0 = time.perf_counter()
        fn()
        cuda_sync()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--candidates", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budgets", type=int, nargs="+", default=[16_384, 65_536])
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.datasets import load_trec_candidates
    from ranker.text import LoadOptions, load_reranker

    cands = load_trec_candidates(args.candidates)
    qid = next(iter(cands.candidates))
    query, docs = cands.queries[qid], [h.content for h in cands.candidates[qid]][:100]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(args.backbone, num_labels=1)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(args.backbone).save_pretrained(tmp)
        for budget in args.budgets:
            r: Any = load_reranker(tmp, LoadOptions(device=args.device, batch_tokens=budget))
            prepared = r.model.prepare(query, docs)
            plan = r.plan(prepared.lengths)

            def forward(r: Any = r, prepared: Any = prepared, plan: Any = plan) -> None:
                with torch.inference_mode():
                    parts = [r.model.score_prepared(prepared, rows).float() for rows in plan]
                    torch.cat(parts).cpu()

            def total(r: Any = r) -> None:
                r.score(query, docs)

            def prepare(r: Any = r) -> None:
                r.model.prepare(query, docs)

            row = {
                "total_ms": _median_ms(total, args.repeats),
                "prepare_ms": _median_ms(prepare, args.repeats),
                "forward_ms": _median_ms(forward, args.repeats),
                "batches": len(plan),
                "tokens": int(prepared.lengths.sum()),
                "longest": int(prepared.lengths.max()),
            }
            print(budget, row, flush=True)


if __name__ == "__main__":
    main()
