"""Embedding throughput: Quarry's embedder vs plain ``SentenceTransformer.encode``.

Both embed the same texts (title + " " + text of the first ``--limit`` corpus documents) with
the same weights on the same device: fp16 on CUDA, fp32 on CPU. Quarry tokenises once and runs
token-budget batches; the baselines are plain ``encode`` calls at batch sizes 32 (its default)
and 128. After a warm-up, the methods run round-robin ``--repeats`` times (so background load
hits them alike) and the median wall time is reported, with docs/s, tokens/s (tokens after
truncation, special tokens included) and Quarry's speed-up over each baseline.

    python bench/embed_throughput.py --corpus ../shared/data/scifact/corpus.jsonl --limit 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Settings that change the numbers; recorded when set.
_ENV_KEYS = ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def read_texts(path: Path, limit: int) -> list[str]:
    """``title + " " + text`` of the first ``limit`` documents of a BEIR ``corpus.jsonl``."""
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
                if len(texts) >= limit:
                    break
    return texts


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/scifact/corpus.jsonl")
    ap.add_argument("--limit", type=int, default=2000, help="first N documents (default 2000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--batch-tokens", type=int, default=16_384)
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--min-fill", type=float, default=None, help="default: the embedder's")
    ap.add_argument("--st-batch-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--out", type=Path, help="default bench/results/embed_throughput_<device>.json")
    args = ap.parse_args()
    if not args.corpus.is_file():
        sys.exit(
            f"corpus not found: {args.corpus}\n"
            "Pass --corpus PATH to a BEIR corpus.jsonl (e.g. ../shared/data/scifact/corpus.jsonl)."
        )
    texts = read_texts(args.corpus, args.limit)
    if not texts:
        sys.exit(f"no documents in {args.corpus}")

    import sentence_transformers
    import torch
    import transformers
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
    )
    if args.min_fill is not None:
        quarry.min_fill = args.min_fill
    plain = SentenceTransformer(str(path), device=device, local_files_only=True)
    plain = plain.half() if device.startswith("cuda") else plain.float()
    n_tokens = sum(quarry.count_tokens(texts))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    methods: dict[str, Callable[[list[str]], np.ndarray]] = {"quarry": quarry.embed}
    for bs in args.st_batch_sizes:
        methods[f"st_encode_bs{bs}"] = lambda t, bs=bs: plain.encode(
            t, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True
        )

    outputs: dict[str, np.ndarray] = {}
    for fn in methods.values():  # warm-up (kernels, allocator, thread pools)
        fn(texts[: min(len(texts), 256)])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            outputs[name] = fn(texts)
            sync()
            times[name].append(time.perf_counter() - start)

    results: dict[str, dict[str, Any]] = {}
    for name, secs in times.items():
        median = statistics.median(secs)
        results[name] = {
            "seconds_median": round(median, 4),
            "seconds": [round(s, 4) for s in secs],
            "docs_per_s": round(len(texts) / median, 1),
            "tokens_per_s": round(n_tokens / median, 1),
        }
    speedup = {
        name: round(results[name]["seconds_median"] / results["quarry"]["seconds_median"], 3)
        for name in results
        if name != "quarry"
    }
    ref = next(name for name in outputs if name != "quarry")
    min_cos = float((outputs["quarry"] * outputs[ref]).sum(axis=1).min())

    report = {
        "benchmark": "embed_throughput",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": {
            "type": device,
            "name": device_name(device),
            "torch_threads": torch.get_num_threads(),
        },
        "env": {k: v for k, v in os.environ.items() if k in _ENV_KEYS},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "numpy": np.__version__,
        },
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
    }
    out = args.out or ROOT / f"bench/results/embed_throughput_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{len(texts)} docs, {n_tokens} tokens, {device} ({report['device']['name']})")
    for name, r in results.items():
        print(
            f"  {name:<18} {r['seconds_median']:8.3f} s  {r['docs_per_s']:9.1f} docs/s"
            f"  {r['tokens_per_s']:11.1f} tok/s"
            + (f"  (quarry is x{speedup[name]:.2f} this)" if name in speedup else "")
        )
    print(f"  min cosine quarry vs {ref}: {min_cos:.6f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
