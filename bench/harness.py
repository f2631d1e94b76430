"""Shared benchmark plumbing: warm-up, synchronised timing, medians, real texts, result files.

Every benchmark times Quarry's path and the baseline a user would pick in the same process,
on the same inputs and device, and writes ``bench/results/<name>.json`` with the command,
device, versions, date and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(
    fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5, sync: bool = True
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls, synchronising CUDA."""
    for _ in range(warmup):
        fn()
    if sync:
        cuda_sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            cuda_sync()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_s": statistics.median(times),
        "min_s": ordered[0],
        "p95_s": p95,
        "n": len(times),
    }


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
        else:
            info["device"] = "cpu"
    except ImportError:
        info["device"] = "cpu"
    for pkg in ("transformers", "sentence_transformers", "faiss", "numpy"):
        with contextlib.suppress(ImportError, AttributeError):
            info[pkg] = __import__(pkg).__version__
    return info


def read_texts(path: Path, limit: int) -> list[str]:
    """Texts of a BEIR corpus (title + text), in file order: real length distributions."""
    if not path.exists():
        sys.exit(f"corpus not found: {path} (a BEIR corpus.jsonl; see ../shared/DATA.md)")
    texts = []
    with path.open() as fh:
        for line in fh:
            rec = json.loads(line)
            text = " ".join(x for x in (rec.get("title"), rec.get("text")) if x)
            if text:
                texts.append(text)
            if len(texts) >= limit:
                break
    return texts


def write_result(name: str, payload: dict[str, Any], out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "env": device_info(),
        **payload,
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def candidate_queries(
    path: Path, depth: int | None = None, *, complete_only: bool = False
) -> list[tuple[str, list[str]]]:
    """``(query, candidate texts)`` of a TREC candidates file (``core.datasets`` format), at
    most ``depth`` candidates each; ``complete_only`` keeps only queries with ``depth`` of them."""
    from core.datasets import load_trec_candidates

    cands = load_trec_candidates(path)
    return [
        (cands.queries[q], [h.content for h in hits][:depth])
        for q, hits in cands.candidates.items()
        if not complete_only or depth is None or len(hits) >= depth
    ]


def add_rerank_run_args(ap: argparse.ArgumentParser) -> None:
    """The options the reranking latency benchmarks share."""
    ap.add_argument("--candidates", type=Path, required=True, help="TREC candidates JSON")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the queries")
    ap.add_argument("--depth", type=int, default=100, help="candidates per query")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
