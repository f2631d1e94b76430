"""``POST /v1/search`` over HTTP (a real uvicorn server) vs the same search called in-process.

Both sides run ``Searcher.search`` on the same collection, queries and model; the difference
is what HTTP, JSON and validation add per request. The collection is the bundled Cranfield
demo corpus, indexed on the embedded default.

    python bench/http_overhead.py --queries 200
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import ROOT, summary, write_result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {k.replace("_s", "_ms"): v * 1000 for k, v in stats.items() if k != "n"}


def main() -> None:
    ap = argparse.ArgumentParser(description="HTTP overhead of /v1/search")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--mode", default="dense")
    args = ap.parse_args()

    import httpx

    from core.ingest_files import DEMO_COLLECTION, DEMO_CORPUS, read_jsonl
    from core.migrate import upgrade
    from core.settings import Settings
    from service import build
    from service.collections import ensure_collection
    from service.ingest import index_documents

    docs = list(read_jsonl(DEMO_CORPUS))
    queries = [" ".join(d.text.split()[:12]) for d in docs[: args.queries]]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        upgrade(settings.resolved_database_url)
        c = build(settings)  # the same composition root as the server's
        ensure_collection(c, DEMO_COLLECTION, index_spec="Flat")
        index_documents(c, DEMO_COLLECTION, docs, show_progress=False)
        searcher = c.searcher

        port = _free_port()
        env = {**os.environ, "QUARRY_DATA_DIR": tmp, "QUARRY_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port), "--no-migrate"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            for _ in range(240):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            body = {"collection": DEMO_COLLECTION, "k": args.k, "mode": args.mode}
            for q in queries[:10]:  # warm-up both sides
                client.post("/v1/search", json={**body, "query": q}).raise_for_status()
                searcher.search(DEMO_COLLECTION, q, k=args.k, mode=args.mode)  # type: ignore[arg-type]
            http_t, inproc_t = [], []
            for q in queries:  # interleaved, so both see the same machine state
                t0 = time.perf_counter()
                client.post("/v1/search", json={**body, "query": q}).raise_for_status()
                http_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                searcher.search(DEMO_COLLECTION, q, k=args.k, mode=args.mode)  # type: ignore[arg-type]
                inproc_t.append(time.perf_counter() - t0)
        finally:
            server.terminate()
            server.wait(timeout=30)
            c.close()
    http_s, inproc_s = summary(http_t), summary(inproc_t)
    result = {
        "what": "sequential /v1/search requests vs Searcher.search in-process, same queries",
        "collection": f"{DEMO_COLLECTION} ({len(docs)} docs)",
        "queries": len(queries),
        "k": args.k,
        "mode": args.mode,
        "http_ms": _ms(http_s),
        "in_process_ms": _ms(inproc_s),
        "overhead_p50_ms": (http_s["median_s"] - inproc_s["median_s"]) * 1000,
        "ratio_http_over_in_process_p50": http_s["median_s"] / inproc_s["median_s"],
    }
    path = write_result(f"http_overhead_{args.mode}_cpu", result)
    print(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
