"""Search under ingest on CPU: closed-loop clients on ``POST /v1/search`` while an ingest runs
in the same Quarry server.

The server is ``quarry serve`` on the embedded default, where ingest jobs run on a thread of
the API process, so the job's document embedding and the queries' embedding share the model
and the machine's cores. The collection is bench/http_load.py's (10,000 SciFact passages,
built once in ``--data-dir`` and copied, so the ingest leaves the original as it was). At the
start of the warm-up 5,000 whole SciFact abstracts (new ids: the collection grows to 15,000)
are posted to ``POST /v1/collections/{name}/documents`` in batches of 500 (one job each, run
one after another); then ``--clients`` clients search for ``--duration`` seconds while the
jobs run, and the jobs' progress is polled every second. A baseline of the same load without
ingest comes first. Recorded: QPS, p50/p99, status counts (only 200 and 503 allowed; the
run exits 1 otherwise), the fraction of the window during which a job was running (from the
jobs' own start and finish times: 1.0 means the whole window was under ingest) and about how
many documents were indexed inside it.

    python bench/ingest_load.py --data-dir /tmp/quarry-http-load            # ~4 min
    python bench/ingest_load.py --duration 5 --baseline-duration 3 --data-dir /tmp/quarry-http-load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, write_result
from bench.http_load import (
    COLLECTION,
    SCIFACT,
    CpuProbe,
    LevelStats,
    Load,
    closed_loop,
    load_queries,
    log_summary,
    parse_env,
    prepare_collection,
    quarry_search,
    quarry_server,
    run_level,
    status_key,
)

logger = logging.getLogger("bench.ingest_load")


def ingest_docs(n: int) -> list[dict[str, Any]]:
    """``n`` whole SciFact abstracts (title + text) under ids the collection does not hold."""
    docs: list[dict[str, Any]] = []
    with (SCIFACT / "corpus.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            text = " ".join(x for x in (rec.get("title"), rec.get("text")) if x)
            if text:
                docs.append({"id": f"scifact-full/{rec['_id']}", "text": text})
            if len(docs) == n:
                return docs
    sys.exit(f"only {len(docs)} SciFact abstracts, {n} asked for")


def _epoch(stamp: str | None) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp).timestamp()


def overlap_s(intervals: Sequence[tuple[float, float]], window: tuple[float, float]) -> float:
    """Seconds of ``window`` covered by the union of ``intervals``."""
    covered, reach = 0.0, window[0]
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, window[1])
        if end > start:
            covered += end - start
            reach = end
    return covered


@dataclass
class IngestProgress:
    """The ingest's requests and its jobs as last seen; documents done, sampled each second."""

    post_codes: Counter[str] = field(default_factory=Counter)
    post_ms: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, done)
    posted_at: float | None = None  # when the last batch was accepted
    # time.time() - time.perf_counter(): the jobs' timestamps are wall-clock
    epoch_offset: float = field(default_factory=lambda: time.time() - time.perf_counter())

    def done_at(self, t: float) -> int:
        """Documents indexed by time ``t`` (the last sample sent at or before it)."""
        before = [done for ts, done in self.samples if ts <= t]
        return before[-1] if before else 0

    def summary(self, window: tuple[float, float]) -> dict[str, Any]:
        wall = (window[0] + self.epoch_offset, window[1] + self.epoch_offset)
        runs = []
        for job in self.jobs.values():
            started = _epoch(job.get("started_at"))
            if started is not None:
                runs.append((started, _epoch(job.get("finished_at")) or math.inf))
        in_window = self.done_at(window[1]) - self.done_at(window[0])
        return {
            "post_status": dict(self.post_codes),
            "post_ms_max": max(self.post_ms, default=None),
            "posted_s_after_window_start": None
            if self.posted_at is None
            else self.posted_at - window[0],
            "jobs": len(self.job_ids),
            "job_states_after": dict(Counter(str(j.get("state")) for j in self.jobs.values())),
            "ingest_running_fraction_of_window": overlap_s(runs, wall) / (wall[1] - wall[0]),
            "running_at_window_end": any(s <= wall[1] < e for s, e in runs),
            "indexed_in_window_approx": in_window,
            "indexed_docs_per_s_in_window_approx": in_window / (window[1] - window[0]),
            "indexed_after": sum(int(j.get("done", 0)) for j in self.jobs.values()),
        }


async def _post_batches(
    client: httpx.AsyncClient, docs: Sequence[dict[str, Any]], batch: int, p: IngestProgress
) -> None:
    path = f"/v1/collections/{COLLECTION}/documents"
    for i in range(0, len(docs), batch):
        t0 = time.perf_counter()
        try:
            r = await client.post(path, json={"documents": list(docs[i : i + batch])})
            code = str(r.status_code)
        except httpx.HTTPError as exc:
            code = f"error:{type(exc).__name__}"
        p.post_ms.append((time.perf_counter() - t0) * 1000)
        p.post_codes[code] += 1
        if code == "202":
            p.job_ids.append(r.json()["job"]["id"])
        else:
            logger.error("ingest batch %d: %s", i // batch, code)


async def _get_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any] | None:
    try:
        r = await client.get(f"/v1/jobs/{job_id}")
        return dict(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def _sample(client: httpx.AsyncClient, p: IngestProgress) -> None:
    """Record the jobs as they are now (the batches posted so far), fetched concurrently."""
    t, ids = time.perf_counter(), list(p.job_ids)
    for job_id, job in zip(
        ids, await asyncio.gather(*(_get_job(client, i) for i in ids)), strict=True
    ):
        if job is not None:
            p.jobs[job_id] = job
    p.samples.append((t, sum(int(p.jobs.get(i, {}).get("done", 0)) for i in ids)))


async def _poll_jobs(
    client: httpx.AsyncClient, p: IngestProgress, search: asyncio.Task[LevelStats]
) -> None:
    """Sample the jobs once a second while the search load runs, and once after it."""
    while not search.done():
        await _sample(client, p)
        await asyncio.wait({search}, timeout=1.0)
    await _sample(client, p)


async def under_ingest(
    base_url: str,
    texts: Sequence[str],
    load: Load,
    docs: Sequence[dict[str, Any]],
    batch: int,
    server_cpu: CpuProbe,
) -> tuple[LevelStats, IngestProgress]:
    """Start the search load, post the ingest during its warm-up, poll the jobs while it runs."""
    progress = IngestProgress()
    async with httpx.AsyncClient(base_url=base_url, timeout=load.timeout_s) as client:
        search = asyncio.create_task(
            closed_loop(base_url, quarry_search(), texts, load, server_cpu)
        )
        poller = asyncio.create_task(_poll_jobs(client, progress, search))
        await _post_batches(client, docs, batch, progress)
        progress.posted_at = time.perf_counter()
        await poller
        stats = await search
    return stats, progress


def run_under_ingest(
    base_url: str,
    texts: Sequence[str],
    load: Load,
    docs: Sequence[dict[str, Any]],
    batch: int,
    server_cpu: CpuProbe,
) -> tuple[LevelStats, IngestProgress]:
    """:func:`under_ingest` on a fresh event loop (uvloop when installed)."""
    coro = under_ingest(base_url, texts, load, docs, batch, server_cpu)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--baseline-duration", type=float, default=20.0, help="0: no baseline")
    ap.add_argument("--ingest-docs", type=int, default=5000)
    ap.add_argument("--ingest-batch", type=int, default=500, help="documents per request")
    ap.add_argument("--docs", type=int, default=10_000, help="documents in the collection")
    ap.add_argument("--data-dir", type=Path, help="the prepared collection (copied, not changed)")
    ap.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--name", default="ingest_load_cpu", help="result file name (no .json)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    extra_env = parse_env(args.server_env)
    texts_source, texts = load_queries()
    docs = ingest_docs(args.ingest_docs)
    with tempfile.TemporaryDirectory(prefix="quarry-ingest-load-") as tmp:
        source = (args.data_dir or Path(tmp) / "source").resolve()
        collection = prepare_collection(source, args.docs)
        data_dir = Path(tmp) / "data"
        shutil.copytree(source, data_dir)
        name = "quarry-batch" if args.batching else "quarry-off"
        with quarry_server(
            name, data_dir, Path(tmp), batching=args.batching, extra_env=extra_env
        ) as server:
            baseline = None
            if args.baseline_duration > 0:
                base_load = Load(args.clients, args.baseline_duration, args.warmup, args.timeout)
                baseline = run_level(
                    server.base_url, quarry_search(), texts, base_load, server.cpu_seconds
                ).summary()
                log_summary(f"{name} alone", "search", baseline)
            load = Load(args.clients, args.duration, args.warmup, args.timeout)
            stats, progress = run_under_ingest(
                server.base_url, texts, load, docs, args.ingest_batch, server.cpu_seconds
            )
    search = stats.summary()
    log_summary(f"{name} +ingest", "search", search)
    ingest = progress.summary(stats.window)
    others = search["status"]["other"] + sum(
        n for c, n in progress.post_codes.items() if c != "202" and status_key(c) == "other"
    )
    payload = {
        "what": f"{args.clients} closed-loop clients on /v1/search (dense, k=10) for "
        f"{args.duration:.0f} s while {len(docs)} documents are ingested into the same "
        "collection by the same (embedded) server; baseline: the same load without ingest",
        "collection": {**collection, "ingested": f"{len(docs)} whole SciFact abstracts, new ids"},
        "texts": f"{texts_source}, one per request, cycled",
        "settings": {
            "clients": args.clients,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ingest_batch": args.ingest_batch,
            "server_env": {"QUARRY_SERVING__BATCHING": str(args.batching).lower(), **extra_env},
        },
        "results": {"search_alone": baseline, "search_under_ingest": search, "ingest": ingest},
        "responses_other_than_200_503": others,
        "only_200_503": others == 0,
        "ingest_overlapped_whole_window": ingest["ingest_running_fraction_of_window"] > 0.99,
    }
    path = write_result(args.name, payload, args.out)
    print(f"search alone:        {baseline and _line(baseline)}")
    print(f"search under ingest: {_line(search)}")
    print(f"ingest: {ingest}")
    print(f"wrote {path}")
    if others:
        logger.error("%d responses other than 200/503", others)
        sys.exit(1)


def _line(s: dict[str, Any]) -> str:
    p50, p99 = s["p50_ms"], s["p99_ms"]
    return (
        f"qps {s['qps']:.1f}, p50 {p50 and round(p50, 1)} ms, p99 {p99 and round(p99, 1)} ms, "
        f"status {s['status']}"
    )


if __name__ == "__main__":
    main()
