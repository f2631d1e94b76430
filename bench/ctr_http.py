"""``POST /v1/ctr/score`` over HTTP on loopback: 1,000 candidates for a user with a
10,000-event history, per model kind (SDIM with its encoded history, DIN full attention),
against a real ``quarry serve`` (embedded mode, CPU).

A model of each kind with random weights over a synthetic 20,000-item catalogue is deployed,
the user's events are posted, one request warms the state (the history is encoded once and
kept, as the BSE worker would), then the median and p99 of timed requests are reported.

    python bench/ctr_http.py --repeats 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import RESULTS, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="sdim,din")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--history", type=int, default=10_000)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    import httpx
    import numpy as np

    from ranker.ctr.catalogue import ItemCatalogue
    from ranker.ctr.persistence import save_model
    from ranker.ctr.registry import build_module, make_config

    rng = np.random.default_rng(0)
    n_cat = 20
    categories = rng.integers(1, n_cat, size=args.items)
    item_ids = [f"i{i}" for i in range(args.items)]
    catalogue = ItemCatalogue(item_ids, categories, ["", *[f"c{j}" for j in range(1, n_cat)]])
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QUARRY_DATA_DIR": f"{tmp}/data", "QUARRY_LOG_LEVEL": "WARNING"}
        env["QUARRY_CTR__MAX_HISTORY_EVENTS"] = str(args.history)
        quarry = [sys.executable, "-m", "cli"]
        subprocess.run([*quarry, "db", "upgrade"], env=env, cwd=ROOT, check=True)
        for kind in args.kinds.split(","):
            config = make_config(
                kind,
                n_items=args.items,
                n_categories=n_cat,
                options={"max_history": args.history},
            )
            path = Path(tmp) / kind
            save_model(
                build_module(config, categories),
                catalogue,
                path,
                metadata={"sample_options": {"history": "all"}},
            )
            subprocess.run(
                [*quarry, "ctr", "deploy", str(path), "--name", kind], env=env, cwd=ROOT, check=True
            )
        port = 18000 + os.getpid() % 1000
        server = subprocess.Popen(
            [*quarry, "serve", "--port", str(port), "--no-migrate"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            client = httpx.Client(base_url=base, timeout=120)
            for _ in range(240):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            t0 = 1_700_000_000
            history = rng.integers(0, args.items, size=args.history)
            events = [
                {"user_id": "u1", "item_id": item_ids[int(r)], "timestamp": t0 + i, "label": 1}
                for i, r in enumerate(history)
            ]
            client.post("/v1/events", json={"events": events}).raise_for_status()
            cands = [item_ids[int(r)] for r in rng.integers(0, args.items, size=args.candidates)]
            for kind in args.kinds.split(","):
                body = {"user_id": "u1", "items": cands, "model": kind}
                first = client.post("/v1/ctr/score", json=body)
                first.raise_for_status()
                assert first.json()["history_length"] == args.history, first.json()
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    client.post("/v1/ctr/score", json=body).raise_for_status()
                    times.append((time.perf_counter() - t) * 1000.0)
                times.sort()
                rows[kind] = {
                    "p50_ms": round(statistics.median(times), 2),
                    "p99_ms": round(times[min(len(times) - 1, round(0.99 * (len(times) - 1)))], 2),
                }
                print(kind, rows[kind], flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {
        "what": (
            f"POST /v1/ctr/score over HTTP on loopback, {args.candidates} candidates, a "
            f"{args.history}-event history (encoded once, then kept), embedded server on CPU, "
            "random weights"
        ),
        "rows": rows,
    }
    path = write_result("ctr_http_cpu", result, out=RESULTS)
    print(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
