"""Where one ``score`` call of the cross-encoder spends its time (one query, 100 candidates).

For every TREC DL19 query (``--candidates``), ``--rounds`` times, in one process:

- wall time of ``ModelReranker.score`` (the device synchronised before reading the clock);
- host stages, timed by wrapping the reranker's own functions: tokenising the documents and
  the query, assembling the pairs (``encode_pairs`` less tokenising), the batch plan, the
  padded matrices, and on CUDA the graph calls (host staging, copy, replay, output clone);
- on CUDA, the GPU's busy time per call from ``torch.profiler`` over ten calls of query 0.

The means per call go to ``bench/results/rerank_profile_<device>.json``. A plain encoder
directory gets a one-logit head, as in ``rerank_speed.py``; ``bench/random_weights.py`` builds
one with random weights from a config (speed depends on shapes, not weights).

    python bench/rerank_profile.py --model MODEL_DIR --candidates BM25_dl19.json --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import add_rerank_run_args, candidate_queries, cuda_sync, write_result


def _timer(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0

    return timed


def _gpu_busy_ms(score: Callable[[], object], calls: int = 10) -> float:
    """Summed device time of the kernels and copies of ``calls`` calls, per call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            score()
        cuda_sync()
    busy_us = sum(e.self_device_time_total for e in prof.key_averages())
    return busy_us / 1000.0 / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="cross-encoder or encoder dir")
    add_rerank_run_args(ap)
    args = ap.parse_args()

    import ranker.text.cross_encoder as ce
    from ranker.text import LoadOptions
    from ranker.text.engine import ModelReranker
    from ranker.text.loaders import serve
    from ranker.text.model import load_model

    queries = candidate_queries(args.candidates, args.depth)
    # A Quarry reranker, a sequence classifier, or a plain encoder given a one-logit head.
    model: Any = load_model(args.model)
    if not isinstance(model, ce.CrossEncoderModel):
        sys.exit(f"{args.model} is not a cross-encoder")
    reranker = serve(model, "profile", LoadOptions(device=args.device))
    assert isinstance(reranker, ModelReranker)
    graphs = reranker.warm()
    for q, docs in queries:  # warm-up: allocator, every batch shape's graph
        reranker.score(q, docs)

    totals: dict[str, float] = defaultdict(float)
    # Wrap the reranker's own functions (instance attributes shadow the methods).
    m: Any = model
    r: Any = reranker
    m._cut = _timer(totals, "tokenise_documents", m._cut)
    m._whole = _timer(totals, "tokenise_query", m._whole)
    m.encode_pairs = _timer(totals, "encode_pairs", m.encode_pairs)
    r.plan = _timer(totals, "plan", r.plan)
    pairs_cls: Any = ce._Pairs
    matrices = pairs_cls.matrices
    pairs_cls.matrices = _timer(totals, "matrices", matrices)
    graphs_cls: Any = type(m._graphs[1]) if m._graphs is not None else None
    call: Any = graphs_cls.__call__ if graphs_cls is not None else None
    if graphs_cls is not None:
        graphs_cls.__call__ = _timer(totals, "graph_calls", call)
    walls: list[float] = []
    try:
        for _ in range(args.rounds):
            for q, docs in queries:
                cuda_sync()
                t0 = time.perf_counter()
                reranker.score(q, docs)
                walls.append(time.perf_counter() - t0)
    finally:
        pairs_cls.matrices = matrices
        if graphs_cls is not None:
            graphs_cls.__call__ = call
    calls = len(walls)
    per_call = {k: round(v / calls * 1000, 3) for k, v in totals.items()}
    per_call["pair_assembly"] = round(
        per_call.pop("encode_pairs") - per_call["tokenise_documents"] - per_call["tokenise_query"],
        3,
    )
    result: dict[str, Any] = {
        "what": f"one score() call: one DL19 query with its {args.depth} BM25 candidates",
        "device": args.device,
        "calls": calls,
        "graphs_warmed": graphs,
        "wall_mean_ms": round(sum(walls) / calls * 1000, 3),
        "wall_p50_ms": round(sorted(walls)[calls // 2] * 1000, 3),
        "host_stages_mean_ms": per_call,
    }
    if args.device.startswith("cuda"):
        q, docs = queries[0]
        result["gpu_busy_per_call_ms_query0"] = round(
            _gpu_busy_ms(lambda: reranker.score(q, docs)), 3
        )
    suffix = "cuda" if args.device.startswith("cuda") else "cpu"
    path = write_result(f"rerank_profile_{suffix}", result, out=args.out_dir)
    print(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
