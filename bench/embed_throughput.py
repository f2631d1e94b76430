"""Embedding throughput: Quarry's embedder vs plain ``SentenceTransformer.encode``.

Both embed the same texts (title + " " + text of the first ``--limit`` corpus documents) with
the same weights on the same device: fp16 on CUDA, fp32 on CPU. Quarry tokenises once and runs
token-budget batches; the baselines are plain ``encode`` calls at batch sizes 32 (its default)
and 128. After a warm-up the methods run round-robin ``--repeats`` times, so background load
hits them alike; reported are the median wall time, docs/s, tokens/s (tokens after truncation,
special tokens included) and Quarry's speed-up over each baseline.

    python bench/embed_throughput.py --corpus ../shared/data/scifact/corpus.jsonl --limit 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHARED_DATA, cuda_sync, read_texts, summary, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=SHARED_DATA / "scifact/corpus.jsonl")
    ap.add_argument("--limit", type=int, default=2000, help="first N documents (default 2000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="known name or local directory")
    ap.add_argument("--batch-tokens", type=int, default=16_384)
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--min-fill", type=float, default=None, help="default: the embedder's")
    ap.add_argument("--st-batch-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument(
        "--extra-batch-tokens",
        type=int,
        nargs="*",
        default=[],
        help="also time Quarry at these token budgets (rows quarry_bt<N>)",
    )
    ap.add_argument(
        "--no-pipeline-row",
        action="store_true",
        help="also time Quarry with the bulk pipeline off (row quarry_nopipe; CUDA only)",
    )
    ap.add_argument("--out-dir", type=Path, default=None, help="default bench/results")
    ap.add_argument("--name", help="result file name (default embed_throughput_<device>)")
    ap.add_argument("--note", help="free text recorded with the result (e.g. where it ran)")
    args = ap.parse_args()
    texts = read_texts(args.corpus, args.limit)  # exits with a message if the corpus is missing
    if not texts:
        sys.exit(f"no documents in {args.corpus}")

    from sentence_transformers import SentenceTransformer

    from embedder import SentenceTransformerEmbedder, resolve_device, resolve_model_path

    device = resolve_device(args.device)
    path = resolve_model_path(args.model)
    quarry = SentenceTransformerEmbedder(
        path,
        name=args.model,
        device=device,
        batch_tokens=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        min_fill=args.min_fill,
    )
    plain = SentenceTransformer(str(path), device=device, local_files_only=True)
    plain = plain.half() if device.startswith("cuda") else plain.float()
    n_tokens = sum(quarry.count_tokens(texts))

    def st_encode(batch_size: int) -> Callable[[list[str]], np.ndarray]:
        return lambda t: plain.encode(
            t, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    methods: dict[str, Callable[[list[str]], np.ndarray]] = {"quarry": quarry.embed}
    for budget in args.extra_batch_tokens:
        other = SentenceTransformerEmbedder(
            path,
            name=args.model,
            device=device,
            batch_tokens=budget,
            max_batch_size=max(args.max_batch_size, budget // 32),
            min_fill=args.min_fill,
        )
        methods[f"quarry_bt{budget}"] = other.embed
    if args.no_pipeline_row:
        plain_path = SentenceTransformerEmbedder(
            path,
            name=args.model,
            device=device,
            batch_tokens=args.batch_tokens,
            max_batch_size=args.max_batch_size,
            min_fill=args.min_fill,
            pipeline=False,
        )
        methods["quarry_nopipe"] = plain_path.embed
    methods.update({f"st_encode_bs{bs}": st_encode(bs) for bs in args.st_batch_sizes})

    # Warm-up: thread pools and allocator; on CUDA a full pass, so every batch shape has met
    # its kernels (a partial warm-up left the first timed GPU pass 2-4x slow).
    warmup = texts if device.startswith("cuda") else texts[:256]
    for fn in methods.values():
        fn(warmup)
    outputs: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            cuda_sync()
            start = time.perf_counter()
            outputs[name] = fn(texts)
            cuda_sync()
            times[name].append(time.perf_counter() - start)

    results: dict[str, dict[str, Any]] = {}
    for name, secs in times.items():
        stats = summary(secs)
        results[name] = {
            **stats,
            "times_s": secs,
            "docs_per_s": round(len(texts) / stats["median_s"], 1),
            "tokens_per_s": round(n_tokens / stats["median_s"], 1),
        }
    speedup = {
        name: round(r["median_s"] / results["quarry"]["median_s"], 3)
        for name, r in results.items()
        if name != "quarry"
    }
    ref = next(name for name in outputs if name.startswith("st_"))
    min_cos = float((outputs["quarry"] * outputs[ref]).sum(axis=1).min())

    # Compute per token of the matrix products (2 FLOP per weight of the transformer
    # layers; attention scores add a little on top), for the share of the chip it reaches.
    layer_weights = sum(
        p.numel() for n, p in quarry.model.named_parameters() if "embeddings" not in n
    )
    flop_per_token = 2 * layer_weights
    extra: dict[str, Any] = {"flop_per_token": flop_per_token}
    if device.startswith("cuda"):
        # The H200's dense bf16/fp16 tensor-core peak (989 TFLOP/s spec; ~790 measured here).
        peak = 989e12
        extra["fraction_of_peak_fp16"] = {
            name: round(r["tokens_per_s"] * flop_per_token / peak, 4) for name, r in results.items()
        }
    out = write_result(
        args.name or f"embed_throughput_{device.split(':')[0]}",
        {
            **extra,
            "note": args.note,
            "device": device,
            "model": args.model,
            "dtype": str(next(quarry.model.parameters()).dtype).removeprefix("torch."),
            "corpus": str(args.corpus),
            "n_docs": len(texts),
            "n_tokens": n_tokens,
            "repeats": args.repeats,
            "quarry_config": {
                "batch_tokens": quarry.batch_tokens,
                "max_batch_size": quarry.max_batch_size,
                "min_fill": quarry.min_fill,
            },
            "results": results,
            "quarry_speedup_vs": speedup,
            "min_cosine_quarry_vs_st": round(min_cos, 6),
        },
        **({"out": args.out_dir} if args.out_dir else {}),
    )

    print(f"{len(texts)} docs, {n_tokens} tokens, {device}")
    for name, r in results.items():
        print(
            f"  {name:<18} {r['median_s']:8.3f} s  {r['docs_per_s']:9.1f} docs/s"
            f"  {r['tokens_per_s']:11.1f} tok/s"
            + (f"  (quarry is x{speedup[name]:.2f} this)" if name in speedup else "")
        )
    print(f"  min cosine quarry vs {ref}: {min_cos:.6f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
