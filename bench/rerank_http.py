"""Latency of one query's 100 candidates through ``POST /v1/rerank`` on a real server, next to
the same reranking in-process.

Five timings of the same requests (TREC DL19 BM25 top-100: each query with its 100
candidates), interleaved so that all see the same machine state:

- ``http``: ``POST /v1/rerank`` to a real ``uvicorn`` server (``python -m cli serve``)
  over loopback, one request at a time (``top_n`` 10, documents not returned), sent with
  the standard library's ``http.client`` on a kept-alive connection;
- ``http_httpx``: the same with ``httpx.Client`` (its own HTTP stack costs about a
  millisecond more per request);
- ``use_case``: :func:`service.rerank.rerank` in this process, through the same composition
  root, allow-list, limits and per-model serving queue as the server;
- ``engine``: the reranker's own ``score(query, documents)``;
- ``engine_one_pass``: the same reranker planning one padded batch per query (the plan
  before :func:`embedder.batching.plan_bucketed`), to show what cutting by length buys;
- ``engine_tokenise``: the model's ``prepare`` alone (tokenising and pair assembly), the
  host-bound share that differs most between machines.

For each HTTP side, ``http_breakdown`` splits the median request into the server's use case
(``timings.rerank_ms``), the server's framework time (its ``Server-Timing`` less the use case)
and the client with the wire (the rest).

The model is a cross-encoder directory (``--model``); a plain encoder directory (the
bundled MiniLM) is first given a one-logit head, as ``rerank_speed.py`` does: speed does not
depend on the head's weights.

    python bench/rerank_http.py --model MiniLM_DIR --candidates BM25_dl19.json --device cuda
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# As `quarry serve` does (cli/main.py): idle OpenMP threads sleep, so the server and this
# process do not spin against each other on a CPU, and both sides run alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.harness import add_rerank_run_args, candidate_queries, summary, write_result
from bench.http_load import quarry_server

JSON_HEADERS = {"content-type": "application/json"}


def _ms(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    stats = {
        **summary(times),
        "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }
    return {k.replace("_s", "_ms"): round(v * 1000, 3) for k, v in stats.items() if k != "n"}


def _classifier_dir(source: str, tmp: Path) -> str:
    """``source`` if it is a sequence classifier, else a copy of it with a one-logit head."""
    config = json.loads((Path(source) / "config.json").read_text())
    if any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures", [])):
        return source
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    out = tmp / "cross-encoder"
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="cross-encoder or plain encoder directory")
    add_rerank_run_args(ap)
    args = ap.parse_args()

    import httpx

    from core.migrate import upgrade
    from core.settings import Settings
    from ranker.text import LoadOptions, load_reranker
    from ranker.text.engine import ModelReranker
    from service import build
    from service.rerank import rerank

    queries = candidate_queries(args.candidates, args.depth, complete_only=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = _classifier_dir(args.model, tmp)
        env = {
            "QUARRY_DATA_DIR": str(tmp / "data"),
            "QUARRY_AUTH__MODE": "off",
            "QUARRY_RERANK__ALLOWED_MODELS": json.dumps([model]),
            "QUARRY_RERANK__DEVICE": args.device,
            "QUARRY_RERANK__MAX_DOCUMENT_CHARS": "100000",
            "QUARRY_EMBEDDER__PRELOAD": "false",
        }
        os.environ.update(env)  # the in-process side reads the same settings
        settings = Settings()
        upgrade(settings.resolved_database_url)
        c = build(settings)
        server = quarry_server(
            "quarry", tmp / "data", tmp, batching=settings.serving.batching, extra_env=env
        )
        try:
            with server:  # waits for /readyz; stops the server on the way out
                client = httpx.Client(base_url=server.base_url, timeout=120)
                host, port = server.base_url.split("//", 1)[1].rsplit(":", 1)
                lean = http.client.HTTPConnection(host, int(port), timeout=120)
                engine = c.rerankers.get(model)
                # The same model planned as before plan_bucketed: one batch per query.
                one_pass: Any = load_reranker(model, LoadOptions(device=args.device))
                one_pass.batch_cost = None
                # Per request of each HTTP side: the server's time until its response started
                # (Server-Timing) and its time inside the use case (queue + scoring).
                split: dict[str, dict[str, list[float]]] = {
                    name: {"app_ms": [], "rerank_ms": []} for name in ("http", "http_httpx")
                }

                def record(name: str, server_timing: str, payload: bytes) -> None:
                    app = server_timing.split(";dur=", 1)[1]
                    split[name]["app_ms"].append(float(app))
                    rerank_ms = json.loads(payload)["timings"]["rerank_ms"]
                    split[name]["rerank_ms"].append(float(rerank_ms))

                def lean_http(q: str, docs: list[str]) -> None:
                    body = {"model": model, "query": q, "documents": docs, "top_n": 10}
                    data = json.dumps(body).encode()
                    try:
                        lean.request("POST", "/v1/rerank", data, JSON_HEADERS)
                        response = lean.getresponse()
                    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                        # The server closed the idle connection (uvicorn's 5 s keep-alive: on
                        # a CPU the other sides take longer than that): connect again.
                        lean.close()
                        lean.request("POST", "/v1/rerank", data, JSON_HEADERS)
                        response = lean.getresponse()
                    payload = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {payload[:300]!r}")
                    record("http", response.headers["server-timing"], payload)

                def httpx_http(q: str, docs: list[str]) -> None:
                    body = {"model": model, "query": q, "documents": docs, "top_n": 10}
                    response = client.post("/v1/rerank", json=body)
                    response.raise_for_status()
                    record("http_httpx", response.headers["server-timing"], response.content)

                def use_case(q: str, docs: list[str]) -> None:
                    rerank(c, q, docs, model=model, top_n=10)

                def bare(q: str, docs: list[str]) -> None:
                    engine.score(q, docs)

                def bare_one_pass(q: str, docs: list[str]) -> None:
                    one_pass.score(q, docs)

                prepare = engine.model.prepare if isinstance(engine, ModelReranker) else None

                def tokenise(q: str, docs: list[str]) -> None:
                    if prepare is not None:
                        prepare(q, docs)

                sides = {
                    "http": lean_http,
                    "http_httpx": httpx_http,
                    "use_case": use_case,
                    "engine": bare,
                    "engine_one_pass": bare_one_pass,
                    # Tokenising and pair assembly alone: the host's share that varies most
                    # between machines, timed with the rest so each file says its host's speed.
                    "engine_tokenise": tokenise,
                }
                times: dict[str, list[float]] = {name: [] for name in sides}
                # Warm-up over every query: model loads, allocator, and the CUDA graphs of each
                # batch shape these requests need (a shape's first use captures its graph).
                for q, docs in queries:
                    for fn in sides.values():
                        fn(q, docs)
                for part in split.values():
                    for values in part.values():
                        values.clear()
                for _ in range(args.rounds):
                    for q, docs in queries:
                        for name, fn in sides.items():
                            t0 = time.perf_counter()
                            fn(q, docs)
                            times[name].append(time.perf_counter() - t0)
        finally:
            c.close()
    stats = {name: _ms(t) for name, t in times.items()}
    suffix = "cuda" if args.device.startswith("cuda") else "cpu"

    def p50(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    breakdown = {}
    for name, part in split.items():
        total = [t * 1000 for t in times[name]]
        breakdown[name] = {
            "total_p50_ms": p50(total),
            # Until the server's response starts, less the use case: parsing, validation,
            # routing, the worker-thread hop, the response model.
            "server_framework_p50_ms": p50(
                [a - r for a, r in zip(part["app_ms"], part["rerank_ms"], strict=True)]
            ),
            "server_rerank_p50_ms": p50(part["rerank_ms"]),
            # The rest: the client's HTTP stack, loopback, sending the response.
            "client_and_wire_p50_ms": p50(
                [t - a for t, a in zip(total, part["app_ms"], strict=True)]
            ),
        }
    result = {
        "what": f"one query with its {args.depth} DL19 BM25 candidates per request, sequential",
        "model": "MiniLM-L6 cross-encoder (one-logit head)",
        "device": args.device,
        "requests_per_side": len(times["http"]),
        "sides": {
            "http": "POST /v1/rerank with the standard library's http.client (keep-alive)",
            "http_httpx": "the same requests with httpx.Client",
            "use_case": "service.rerank.rerank in this process",
            "engine": "the reranker's score() (on CUDA: batches cut by plan_bucketed)",
            "engine_one_pass": "score() with the query's documents in one padded batch",
            "engine_tokenise": "the model's prepare(): tokenising and pair assembly only",
        },
        "latency_ms": stats,
        "http_breakdown": breakdown,
        "http_overhead_p50_ms": round(stats["http"]["median_ms"] - stats["engine"]["median_ms"], 3),
        "goal_p50_under_10ms": {
            name: stats[name]["median_ms"] <= 10.0 for name in ("http", "engine")
        },
    }
    path = write_result(f"rerank_http_{suffix}", result, out=args.out_dir)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
