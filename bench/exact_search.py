"""Exact vector search, 1M x 384 random unit vectors: Quarry's search path vs the baselines.

- quarry: ``indexer.search_segments`` over one flat segment placed by ``maybe_to_gpu``
  (faiss GPU when the installed faiss has GPUs, torch fp16 on CUDA otherwise, CPU faiss on
  a machine without a GPU) — the code path of ``POST /v1/search`` minus HTTP and embedding.
- faiss_cpu: ``faiss.IndexFlatIP`` on all CPU cores.
- torch: a hand-written ``q @ X.T`` + ``topk`` in fp16 on the GPU (skipped without CUDA).

Batched throughput (queries/s at ``--batch`` queries per call) and single-query latency.

    python bench/exact_search.py --n 1000000 --dim 384
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import summary, time_fn, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description="exact search benchmark")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--single", type=int, default=200, help="single-query calls timed")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()

    import faiss
    import torch

    from indexer.gpu import maybe_to_gpu
    from indexer.search import search_segments
    from indexer.segment import LoadedSegment
    from indexer.spec import build_index

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(args.n, dtype=np.int64)
    xq = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    cuda = torch.cuda.is_available()

    index = build_index("Flat", args.dim, "ip", xb, ids)
    placed = maybe_to_gpu(index, True)
    seg = LoadedSegment("bench", placed, ids, "ip", args.dim)  # type: ignore[arg-type]
    where = type(placed).__name__

    def quarry(q: np.ndarray) -> np.ndarray:
        return search_segments([seg], q, args.k, metric="ip")[1]

    flat_cpu = faiss.IndexFlatIP(args.dim)
    flat_cpu.add(xb)

    def faiss_cpu(q: np.ndarray) -> np.ndarray:
        return flat_cpu.search(q, args.k)[1]

    paths = {"quarry": quarry, "faiss_cpu": faiss_cpu}
    if cuda:
        xb_gpu = torch.as_tensor(xb, device="cuda").half()

        def torch_topk(q: np.ndarray) -> np.ndarray:
            qt = torch.as_tensor(q, device="cuda").half()
            return torch.topk(qt @ xb_gpu.T, args.k, dim=1).indices.cpu().numpy()

        paths["torch"] = torch_topk

    # Correctness before speed: every path must agree with exact fp32 search (fp16 may swap
    # near-ties, so compare recall of the true top-k).
    truth = faiss_cpu(xq[:64])
    recall = {
        name: float(
            np.mean(
                [len(set(a) & set(b)) / args.k for a, b in zip(fn(xq[:64]), truth, strict=True)]
            )
        )
        for name, fn in paths.items()
    }

    results: dict[str, dict[str, float]] = {}
    for name, fn in paths.items():
        batched = summary(time_fn(lambda fn=fn: fn(xq), warmup=2, repeats=7))
        rows = iter(range(10**9))

        def one(fn=fn, rows=rows) -> None:  # type: ignore[no-untyped-def]
            i = next(rows) % args.batch
            fn(xq[i : i + 1])

        singles = summary(time_fn(one, warmup=10, repeats=args.single))
        results[name] = {
            "batched_qps": args.batch / batched["median_s"],
            "batched_median_ms": batched["median_s"] * 1000,
            "single_p50_ms": singles["median_s"] * 1000,
            "single_p95_ms": singles["p95_s"] * 1000,
            "recall_at_k_vs_fp32": recall[name],
        }
        print(f"{name:10s} {results[name]}")

    ratios = {
        f"quarry_vs_{b}_batched_qps": results["quarry"]["batched_qps"] / results[b]["batched_qps"]
        for b in results
        if b != "quarry"
    } | {
        f"quarry_vs_{b}_single_latency": results[b]["single_p50_ms"]
        / results["quarry"]["single_p50_ms"]
        for b in results
        if b != "quarry"
    }
    name = args.name or f"exact_search_{'cuda' if cuda else 'cpu'}"
    path = write_result(
        name,
        {
            "what": "exact top-k over random unit vectors; ratios > 1 mean Quarry is faster",
            "n": args.n,
            "dim": args.dim,
            "k": args.k,
            "batch": args.batch,
            "quarry_index_placement": where,
            "results": results,
            "ratios": ratios,
        },
    )
    print(ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
