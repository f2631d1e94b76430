"""The request batcher in-process: N concurrent callers embedding one query each.

Every caller is a thread that embeds one query at a time, in a closed loop, for
``--seconds`` per level. Modes, side by side in one run:

- ``direct``: each caller calls ``Embedder.embed([query])`` itself (the path before the
  batcher: one forward pass per request, serialised by the model's lock);
- ``batched``: each caller goes through :class:`service.serving.Serving` (one queue per
  model, requests merged into batches).

Level 1 of ``direct`` is the sequential baseline (single calls one after another). Reported:
queries/s, p50/p99 latency and the mean requests per batch.

    python bench/batcher_inprocess.py --device cuda --clients 1 64 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, SHARED_DATA, write_result


def _queries(path: Path, limit: int) -> list[str]:
    if not path.exists():
        sys.exit(f"queries not found: {path} (a BEIR queries.jsonl; see ../shared/DATA.md)")
    out = []
    with path.open() as fh:
        for line in fh:
            out.append(json.loads(line)["text"])
            if len(out) >= limit:
                break
    return out


class _Counting:
    """A batch observer that counts requests per batch."""

    def __init__(self) -> None:
        self.batches = 0
        self.items = 0
        self._lock = threading.Lock()

    def queue_depth(self, name: str, items: int, cost: int) -> None:
        pass

    def batch_done(self, name: str, items: int, cost: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.items += items

    def waited(self, name: str, seconds: float) -> None:
        pass

    def rejected(self, name: str, reason: str) -> None:
        pass


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _level(call: Any, queries: list[str], clients: int, seconds: float) -> dict[str, float]:
    """Closed loop: ``clients`` threads calling ``call(query)`` until the time is up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        start.wait()
        k = i
        while time.perf_counter() < stop_at[0]:
            q = queries[k % len(queries)]
            k += clients
            t0 = time.perf_counter()
            try:
                call(q)
            except Exception:
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    flat = [x for per in latencies for x in per]
    return {
        "qps": round(len(flat) / elapsed, 1),
        "p50_ms": round(_pct(flat, 0.5) * 1000, 3) if flat else float("nan"),
        "p99_ms": round(_pct(flat, 0.99) * 1000, 3) if flat else float("nan"),
        "requests": len(flat),
        "errors": sum(errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="known name or local directory")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--queries", type=Path, default=SHARED_DATA / "scifact/queries.jsonl")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--name", help="result file name (default batcher_inprocess_<device>)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    from core.settings import ServingSettings
    from embedder import load_embedder, resolve_device
    from service.serving import EmbedRequest, Serving

    device = resolve_device(args.device)
    embedder = load_embedder(args.model, device=device)
    queries = _queries(args.queries, 5000)

    class _Pool:
        def get(self, name: str) -> Any:
            return embedder

    settings = ServingSettings(
        max_wait_ms=args.max_wait_ms,
        max_queue_requests=max(args.clients) * 2,
        max_queue_tokens=max(args.clients) * 1024,
        timeout_s=60.0,
    )
    counting = _Counting()
    serving = Serving(settings, _Pool(), None)  # type: ignore[arg-type]
    serving.observe(counting)

    def direct(q: str) -> Any:
        return embedder.embed([q], kind="query")

    def batched(q: str) -> Any:
        return serving.embed(args.model, EmbedRequest((q,), kind="query", count=False))

    for fn in (direct, batched):  # warm-up: kernels, allocator, threads
        for q in queries[:64]:
            fn(q)
    rows: dict[str, dict[str, dict[str, float]]] = {"direct": {}, "batched": {}}
    for clients in args.clients:
        for mode, fn in (("direct", direct), ("batched", batched)):
            counting.batches = counting.items = 0
            row = _level(fn, queries, clients, args.seconds)
            if mode == "batched" and counting.batches:
                row["mean_batch"] = round(counting.items / counting.batches, 2)
            rows[mode][str(clients)] = row
            print(mode, clients, row, flush=True)
    serving.close()
    sequential = rows["direct"][str(min(args.clients))]["qps"]
    speedup = {
        c: round(rows["batched"][c]["qps"] / max(sequential, 1e-9), 2) for c in rows["batched"]
    }
    result = {
        "what": "in-process query embedding, N closed-loop caller threads, one query each",
        "model": args.model,
        "device": device,
        "seconds_per_level": args.seconds,
        "max_wait_ms": args.max_wait_ms,
        "rows": rows,
        "batched_qps_over_sequential": speedup,
        "batched_qps_over_direct_same_clients": {
            c: round(rows["batched"][c]["qps"] / max(rows["direct"][c]["qps"], 1e-9), 2)
            for c in rows["batched"]
        },
        "median_direct_qps": statistics.median(r["qps"] for r in rows["direct"].values()),
    }
    suffix = "cuda" if device.startswith("cuda") else "cpu"
    path = write_result(args.name or f"batcher_inprocess_{suffix}", result, out=args.out_dir)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
