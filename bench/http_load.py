"""HTTP load on CPU: closed-loop clients against Quarry (with and without cross-request
batching) and Infinity, one server at a time, started by this process.

Each level runs N concurrent clients, each sending one request at a time (a closed loop):
``POST /v1/embed`` with one short text (a real query), ``POST /v1/search`` with one query
(dense, k=10) against a collection of 10,000 passages, and Infinity's ``POST /embeddings``
with the same texts. Configurations:

- ``quarry-off``: ``quarry serve`` with ``QUARRY_SERVING__BATCHING=false``
- ``quarry-batch``: the same server with ``QUARRY_SERVING__BATCHING=true``
- ``infinity``: ``infinity_emb v2`` (``.venv-infinity``, ``bash scripts/infinity_venv.sh``)
  serving the MiniLM bundled with Quarry, torch engine on the CPU, its default batch size

They run interleaved (A, B, C, A, B, C, ``--rounds``) so that noise shows in the spread.
Per configuration, endpoint and level: QPS (200 responses per second of the measured window,
after a warm-up at the same level), p50/p99 latency of the 200 responses, counts of status
codes, the CPU seconds the client and the server used (they share the machine), and the
spread across rounds. An overload run follows: 256 clients against a Quarry server with a
queue of 8 requests (``QUARRY_SERVING__MAX_QUEUE_REQUESTS``), where every response must be
200 or 503.

The collection (built once in ``--data-dir``, reused by later runs and by both Quarry
configurations): the SciFact corpus (``../shared/data/scifact/corpus.jsonl``, 5,183
abstracts) split into two passages per abstract at the middle sentence (the title on the
first), the first 10,000 passages in corpus order; Cranfield demo abstracts top it up if
more are asked for. Texts: the SciFact queries (1,109 claims, 12 words on average).

    python bench/http_load.py --data-dir /tmp/quarry-http-load          # ~25 min (+ the build)
    python bench/http_load.py --duration 3 --warmup 1 --rounds 1 --data-dir /tmp/quarry-http-load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, ROOT, SHARED_DATA, write_result

logger = logging.getLogger("bench.http_load")

COLLECTION = "http_load"
MODEL = "all-MiniLM-L6-v2"
LEVELS = (1, 16, 64, 256)
CONFIGS = ("quarry-off", "quarry-batch", "infinity")
SCIFACT = SHARED_DATA / "scifact"
INFINITY_VENV = ROOT / ".venv-infinity"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


# --- inputs ------------------------------------------------------------------------------


def load_queries() -> tuple[str, list[str]]:
    """Real short texts and where they come from: the SciFact queries, else Cranfield's, else
    the first 12 words of the demo abstracts."""
    for path in (SCIFACT / "queries.jsonl", SHARED_DATA / "cranfield" / "queries.jsonl"):
        if path.exists():
            with path.open() as fh:
                texts = [" ".join(json.loads(line)["text"].split()) for line in fh]
            texts = [t for t in texts if t]
            return f"{len(texts)} queries of {path.relative_to(ROOT.parent)}", texts
    from core.ingest_files import DEMO_CORPUS, read_jsonl

    texts = [" ".join(d.text.split()[:12]) for d in read_jsonl(DEMO_CORPUS)]
    return f"first 12 words of {len(texts)} Cranfield demo abstracts", texts


def _halves(title: str, text: str) -> list[str]:
    sentences = _SENTENCE_END.split(text.strip())
    if len(sentences) < 2:
        return [f"{title} {text}".strip()]
    mid = len(sentences) // 2
    return [f"{title} {' '.join(sentences[:mid])}".strip(), " ".join(sentences[mid:])]


def scifact_passages() -> Iterator[dict[str, Any]]:
    """SciFact abstracts as two passages each (split at the middle sentence)."""
    path = SCIFACT / "corpus.jsonl"
    if not path.exists():
        sys.exit(f"corpus not found: {path} (a BEIR corpus.jsonl; see ../shared/DATA.md)")
    with path.open() as fh:
        for line in fh:
            rec = json.loads(line)
            for i, text in enumerate(_halves(rec.get("title") or "", rec.get("text") or "")):
                if text:
                    yield {"id": f"scifact/{rec['_id']}#{i}", "text": text}


def cranfield_docs() -> Iterator[dict[str, Any]]:
    from core.ingest_files import DEMO_CORPUS, read_jsonl

    for doc in read_jsonl(DEMO_CORPUS):
        yield {"id": f"cranfield/{doc.id}", "text": doc.text}


def collection_docs(n: int) -> list[dict[str, Any]]:
    """The benchmark collection's ``n`` documents (``{"id", "text"}``), deterministic."""
    docs = list(itertools.islice(itertools.chain(scifact_passages(), cranfield_docs()), n))
    if len(docs) == n:
        return docs
    sys.exit(f"only {len(docs)} documents available, {n} asked for")


def prepare_collection(data_dir: Path, n_docs: int) -> dict[str, Any]:
    """Build (or find already built) the dense collection in ``data_dir``, in-process."""
    from core.documents import DocumentIn
    from core.migrate import upgrade
    from core.settings import Settings
    from service import build
    from service.collections import ensure_collection, get_collection
    from service.ingest import index_documents

    docs = collection_docs(n_docs)
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=data_dir)
    settings.embedder.device = "cpu"
    upgrade(settings.resolved_database_url)
    t0 = time.perf_counter()
    with build(settings) as c:
        ensure_collection(c, COLLECTION, index_spec="Flat")
        report = index_documents(
            c, COLLECTION, (DocumentIn(**d) for d in docs), show_progress=False, poll_s=0.2
        )
        info = get_collection(c, COLLECTION)
    if report.failed_jobs:
        sys.exit(f"indexing the collection failed: jobs {report.failed_jobs}")
    if info.vectors != n_docs:
        sys.exit(f"{data_dir} holds {info.vectors} vectors, not {n_docs}: use another --data-dir")
    logger.info(
        "collection %r in %s: %d documents (%d newly indexed) in %.0f s",
        COLLECTION,
        data_dir,
        report.documents,
        report.indexed,
        time.perf_counter() - t0,
    )
    return {
        "name": COLLECTION,
        "documents": info.vectors,
        "segments": info.segments,
        "index_spec": "Flat",
        "metric": "cosine",
        "source": "SciFact corpus split into two passages per abstract at the middle sentence "
        "(title on the first), first passages in corpus order; Cranfield demo abstracts after",
    }


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process in its own session (a kill takes its children), output to a log."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        port: int,
        ready_path: str,
        log_dir: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.base_url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log_path = log_dir / f"{name}-{port}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.proc.poll()}) ---\n" + "\n".join(lines[-n:])

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Poll the ready path until it answers 200; seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before it was ready\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s\n{self.tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server process so far (Linux), else None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Server:
        try:
            took = self.wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("%s ready on %s after %.1f s", self.name, self.base_url, took)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def quarry_server(
    name: str, data_dir: Path, log_dir: Path, *, batching: bool, extra_env: dict[str, str]
) -> Server:
    """``quarry serve`` on the embedded default in ``data_dir`` (already migrated)."""
    port = free_port()
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(data_dir),
        "QUARRY_LOG_LEVEL": "WARNING",
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "QUARRY_SERVING__BATCHING": "true" if batching else "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra_env,
    }
    args = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--no-migrate"]
    return Server(name, args, env, port, "/readyz", log_dir)


def infinity_args(venv: Path, model_dir: Path, port: int) -> list[str]:
    """The Infinity command line: one model, torch engine, CPU, loopback, its defaults."""
    return [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        str(model_dir),
        "--served-model-name",
        MODEL,
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def infinity_server(venv: Path, log_dir: Path) -> Server:
    """``infinity_emb v2`` serving the bundled MiniLM directory offline."""
    from embedder import resolve_model_path

    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "INFINITY_HOME": str(log_dir),  # its .infinity_cache, else in the working directory
    }
    args = infinity_args(venv, resolve_model_path(MODEL), port)
    return Server("infinity", args, env, port, "/health", log_dir, cwd=log_dir)


def infinity_version(venv: Path) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import infinity_emb; print(infinity_emb.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            # importing infinity_emb makes .infinity_cache in INFINITY_HOME, else the cwd
            env={**os.environ, "INFINITY_HOME": str(venv), "DO_NOT_TRACK": "1"},
        )
        return out.stdout.strip()
    return None


# --- endpoints and the closed loop -------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A request shape: ``name`` is what the results are keyed by (embed, search)."""

    name: str
    path: str
    body: Callable[[str], dict[str, Any]]


def quarry_embed() -> Endpoint:
    return Endpoint("embed", "/v1/embed", lambda t: {"inputs": [t], "kind": "query"})


def quarry_search(collection: str = COLLECTION, k: int = 10) -> Endpoint:
    return Endpoint(
        "search", "/v1/search", lambda t: {"collection": collection, "query": t, "k": k}
    )


def infinity_embed() -> Endpoint:
    return Endpoint("embed", "/embeddings", lambda t: {"input": [t], "model": MODEL})


def status_key(code: str) -> str:
    """``200``, ``503`` or ``other`` (any other status, or a transport error)."""
    return code if code in ("200", "503") else "other"


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (``q`` in 0..1); None if empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


@dataclass(frozen=True)
class Load:
    """One level: ``clients`` closed-loop clients for ``warmup_s`` then ``duration_s``."""

    clients: int
    duration_s: float
    warmup_s: float = 0.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.clients < 1 or self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"bad load: {self}")


@dataclass
class LevelStats:
    """What one level measured: latencies of the 200s and every response's status."""

    load: Load
    window: tuple[float, float] = (0.0, 0.0)  # perf_counter() bounds of the measured window
    latencies_s: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    # Responses that arrived after the window closed (not counted above): a stalled server
    # shows here, as requests that were in flight for long after the end.
    late: int = 0
    late_max_s: float = 0.0

    def add(self, latency_s: float, code: str) -> None:
        self.codes[code] += 1
        if code == "200":
            self.latencies_s.append(latency_s)

    def add_late(self, latency_s: float) -> None:
        self.late += 1
        self.late_max_s = max(self.late_max_s, latency_s)

    def summary(self) -> dict[str, Any]:
        window = self.load.duration_s
        ordered = sorted(self.latencies_s)
        status = Counter({"200": 0, "503": 0, "other": 0})
        for code, n in self.codes.items():
            status[status_key(code)] += n
        return {
            "clients": self.load.clients,
            "window_s": window,
            "qps": len(ordered) / window,
            "responses_per_s": sum(self.codes.values()) / window,
            "p50_ms": _ms(percentile(ordered, 0.50)),
            "p99_ms": _ms(percentile(ordered, 0.99)),
            "status": dict(status),
            "other_detail": {c: n for c, n in self.codes.items() if status_key(c) == "other"},
            "late_responses": self.late,
            "late_max_ms": self.late_max_s * 1000 if self.late else None,
            "client_cpu_cores": self.client_cpu_s / window,
            "server_cpu_cores": None if self.server_cpu_s is None else self.server_cpu_s / window,
        }


CpuProbe = Callable[[], float | None]


def _no_probe() -> float | None:
    return None


async def _one_client(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    texts: Sequence[str],
    first: int,
    window: tuple[float, float],
    stats: LevelStats,
) -> None:
    """Send requests one at a time until the window closes; count those that end inside it.
    Client ``first`` sends texts ``first``, ``first + clients``, ... (cycling)."""
    i = first
    while time.perf_counter() < window[1]:
        t0 = time.perf_counter()
        try:
            response = await client.post(endpoint.path, json=endpoint.body(texts[i % len(texts)]))
            code = str(response.status_code)
        except httpx.HTTPError as exc:
            code = f"error:{type(exc).__name__}"
        t1 = time.perf_counter()
        if window[0] <= t1 <= window[1]:
            stats.add(t1 - t0, code)
        elif t1 > window[1]:
            stats.add_late(t1 - t0)
        i += stats.load.clients


async def _cpu_meter(window: tuple[float, float], stats: LevelStats, server_cpu: CpuProbe) -> None:
    """Client (this process) and server CPU seconds spent inside the window."""
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    c0, s0 = time.process_time(), server_cpu()
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    c1, s1 = time.process_time(), server_cpu()
    stats.client_cpu_s = c1 - c0
    if s0 is not None and s1 is not None:
        stats.server_cpu_s = s1 - s0


async def closed_loop(
    base_url: str,
    endpoint: Endpoint,
    texts: Sequence[str],
    load: Load,
    server_cpu: CpuProbe = _no_probe,
) -> LevelStats:
    """``load.clients`` concurrent clients, each with its own connection and one request in
    flight; only responses that arrive inside the window after the warm-up count."""
    if not texts:
        raise ValueError("closed_loop needs at least one text")
    stats = LevelStats(load)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, timeout=load.timeout_s, limits=limits)
            )
            for _ in range(load.clients)
        ]
        start = time.perf_counter() + load.warmup_s
        stats.window = window = (start, start + load.duration_s)
        await asyncio.gather(
            _cpu_meter(window, stats, server_cpu),
            *(_one_client(c, endpoint, texts, i, window, stats) for i, c in enumerate(clients)),
        )
    return stats


def run_level(
    base_url: str,
    endpoint: Endpoint,
    texts: Sequence[str],
    load: Load,
    server_cpu: CpuProbe = _no_probe,
) -> LevelStats:
    """:func:`closed_loop` on a fresh event loop (uvloop when installed: less client CPU)."""
    coro = closed_loop(base_url, endpoint, texts, load, server_cpu)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --- configurations, rounds and the result file ------------------------------------------


@dataclass(frozen=True)
class Config:
    """A server to start and the endpoints to load it with."""

    name: str
    start: Callable[[], Server]
    endpoints: tuple[Endpoint, ...]


def make_configs(
    names: Sequence[str],
    endpoints: Sequence[str],
    data_dir: Path,
    log_dir: Path,
    infinity_venv: Path,
    extra_env: dict[str, str],
) -> list[Config]:
    quarry_eps = tuple(e for e in (quarry_embed(), quarry_search()) if e.name in endpoints)
    makers: dict[str, Config] = {
        "quarry-off": Config(
            "quarry-off",
            lambda: quarry_server(
                "quarry-off", data_dir, log_dir, batching=False, extra_env=extra_env
            ),
            quarry_eps,
        ),
        "quarry-batch": Config(
            "quarry-batch",
            lambda: quarry_server(
                "quarry-batch", data_dir, log_dir, batching=True, extra_env=extra_env
            ),
            quarry_eps,
        ),
        "infinity": Config(
            "infinity",
            lambda: infinity_server(infinity_venv, log_dir),
            tuple(e for e in (infinity_embed(),) if e.name in endpoints),
        ),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}. Valid: {', '.join(makers)}")
    if "infinity" in names and not (infinity_venv / "bin" / "infinity_emb").exists():
        sys.exit(f"no Infinity in {infinity_venv}: run `bash scripts/infinity_venv.sh` first")
    return [makers[n] for n in names if makers[n].endpoints]


def run_config(
    config: Config, texts: Sequence[str], loads: Sequence[Load]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Start the server, run every endpoint at every load, stop it: ``{endpoint: {clients:
    summary}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    with config.start() as server:
        for endpoint in config.endpoints:
            for load in loads:
                summary = run_level(
                    server.base_url, endpoint, texts, load, server.cpu_seconds
                ).summary()
                log_summary(config.name, endpoint.name, summary)
                out.setdefault(endpoint.name, {})[str(load.clients)] = summary
    return out


def log_summary(config: str, endpoint: str, s: dict[str, Any]) -> None:
    nan = float("nan")
    logger.info(
        "%-14s %-6s c=%-3d qps=%7.1f p50=%7.1f ms p99=%7.1f ms status=%s cpu client=%.2f",
        config, endpoint, s["clients"], s["qps"], s["p50_ms"] or nan, s["p99_ms"] or nan,
        s["status"], s["client_cpu_cores"],
    )  # fmt: skip


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median, min, max and (max - min) / median in percent over the rounds."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread_pct": None}
    med = statistics.median(vals)
    pct = (max(vals) - min(vals)) / med * 100 if med else None
    return {"median": med, "min": min(vals), "max": max(vals), "spread_pct": pct}


def aggregate(rounds: list[dict[str, dict[str, dict[str, dict[str, Any]]]]]) -> dict[str, Any]:
    """``rounds[r][config][endpoint][level]`` summaries -> spreads and summed status counts."""
    out: dict[str, Any] = {}
    for config, by_endpoint in rounds[0].items():
        for endpoint, by_level in by_endpoint.items():
            for level in by_level:
                per_round = [r[config][endpoint][level] for r in rounds if config in r]
                status: Counter[str] = Counter()
                for s in per_round:
                    status.update(s["status"])
                out.setdefault(config, {}).setdefault(endpoint, {})[level] = {
                    "qps": spread([s["qps"] for s in per_round]),
                    "p50_ms": spread([s["p50_ms"] for s in per_round]),
                    "p99_ms": spread([s["p99_ms"] for s in per_round]),
                    "status": dict(status),
                    "client_cpu_cores": spread([s["client_cpu_cores"] for s in per_round]),
                    "server_cpu_cores": spread([s["server_cpu_cores"] for s in per_round]),
                    "rounds": per_round,
                }
    return out


def _median(
    results: dict[str, Any], config: str, endpoint: str, level: int, metric: str
) -> float | None:
    try:
        value = results[config][endpoint][str(level)][metric]["median"]
    except KeyError:
        return None
    return None if value is None else float(value)


def goals(results: dict[str, Any], level: int = 64) -> list[dict[str, Any]]:
    """The issue's targets at ``level`` clients, on the medians over rounds."""
    out: list[dict[str, Any]] = []

    def ratio(goal: str, a: float | None, b: float | None, target: float) -> None:
        value = a / b if a is not None and b else None
        out.append(
            {"goal": goal, "measured": value, "met": None if value is None else value >= target}
        )

    for ep in ("embed", "search"):
        ratio(
            f"{level} clients, /{ep}: quarry-batch QPS >= 2x quarry-off",
            _median(results, "quarry-batch", ep, level, "qps"),
            _median(results, "quarry-off", ep, level, "qps"),
            2.0,
        )
    ratio(
        f"{level} clients, embed: quarry-batch QPS >= 1.2x infinity",
        _median(results, "quarry-batch", "embed", level, "qps"),
        _median(results, "infinity", "embed", level, "qps"),
        1.2,
    )
    ours = _median(results, "quarry-batch", "embed", level, "p99_ms")
    theirs = _median(results, "infinity", "embed", level, "p99_ms")
    out.append(
        {
            "goal": f"{level} clients, embed: quarry-batch p99 < infinity p99",
            "measured": {"quarry-batch_ms": ours, "infinity_ms": theirs},
            "met": None if ours is None or theirs is None else ours < theirs,
        }
    )
    return out


def run_overload(
    texts: Sequence[str],
    data_dir: Path,
    log_dir: Path,
    args: argparse.Namespace,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    """``--overload-clients`` against a batching server with a tiny queue: only 200 and 503."""
    env = {**extra_env, "QUARRY_SERVING__MAX_QUEUE_REQUESTS": str(args.overload_queue)}
    per_endpoint: dict[str, Any] = {}
    with quarry_server(
        "quarry-overload", data_dir, log_dir, batching=True, extra_env=env
    ) as server:
        for endpoint in (e for e in (quarry_embed(), quarry_search()) if e.name in args.endpoints):
            load = Load(
                args.overload_clients,
                args.overload_duration or args.duration,
                args.warmup,
                args.timeout,
            )
            stats = run_level(server.base_url, endpoint, texts, load, server.cpu_seconds)
            per_endpoint[endpoint.name] = stats.summary()
            logger.info("overload %-6s %s", endpoint.name, per_endpoint[endpoint.name]["status"])
    others = sum(s["status"]["other"] for s in per_endpoint.values())
    return {
        "what": f"{args.overload_clients} clients, batching on, QUARRY_SERVING__MAX_QUEUE_REQUESTS"
        f"={args.overload_queue}: every response must be 200 or 503",
        "env": {"QUARRY_SERVING__BATCHING": "true", **env},
        "results": per_endpoint,
        "responses_other_than_200_503": others,
        "only_200_503": others == 0,
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(results: dict[str, Any]) -> None:
    """Medians over rounds, one line per configuration, endpoint and level."""
    head = ("config", "endpoint", "clients", "qps", "spread%", "p50 ms", "p99 ms", "200", "503")
    print("\n" + f"{head[0]:<14}" + "".join(f"{h:>10}" for h in (*head[1:], "other")))
    for config, by_ep in results.items():
        for ep, by_level in by_ep.items():
            for level, r in by_level.items():
                row = (
                    config, ep, level, _num(r["qps"]["median"]), _num(r["qps"]["spread_pct"]),
                    _num(r["p50_ms"]["median"]), _num(r["p99_ms"]["median"]),
                    *(r["status"][k] for k in ("200", "503", "other")),
                )  # fmt: skip
                print(f"{row[0]:<14}" + "".join(f"{v:>10}" for v in row[1:]))


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"--server-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv_ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--levels", type=csv_ints, default=list(LEVELS), help="clients per level")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds A,B,C,A,B,C")
    ap.add_argument("--configs", type=csv, default=list(CONFIGS))
    ap.add_argument("--endpoints", type=csv, default=["embed", "search"])
    ap.add_argument("--docs", type=int, default=10_000, help="documents in the collection")
    ap.add_argument("--data-dir", type=Path, help="keep the collection here and reuse it")
    ap.add_argument("--infinity-venv", type=Path, default=INFINITY_VENV)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--overload", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--overload-clients", type=int, default=256)
    ap.add_argument("--overload-queue", type=int, default=8)
    ap.add_argument("--overload-duration", type=float, help="default: --duration")
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the Quarry servers (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--name", default="http_load_cpu", help="result file name (no .json)")
    return ap.parse_args(argv)


def estimate_s(args: argparse.Namespace, configs: Sequence[Config]) -> float:
    """Rough wall time: the levels, ~20 s per server start, the overload run."""
    per_level = args.duration + args.warmup
    levels = sum(len(c.endpoints) for c in configs) * len(args.levels)
    overload = 20 + len(args.endpoints) * ((args.overload_duration or args.duration) + args.warmup)
    return args.rounds * (levels * per_level + 20 * len(configs)) + (
        overload if args.overload else 0
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    args = parse_args(argv)
    extra_env = parse_env(args.server_env)
    texts_source, texts = load_queries()
    with tempfile.TemporaryDirectory(prefix="quarry-http-load-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        log_dir = Path(tmp)
        collection = prepare_collection(data_dir.resolve(), args.docs)
        configs = make_configs(
            args.configs, args.endpoints, data_dir.resolve(), log_dir, args.infinity_venv, extra_env
        )
        loads = [Load(n, args.duration, args.warmup, args.timeout) for n in args.levels]
        logger.info("about %.0f min of load from here", estimate_s(args, configs) / 60)
        rounds = []
        for r in range(args.rounds):
            logger.info("round %d of %d", r + 1, args.rounds)
            rounds.append({c.name: run_config(c, texts, loads) for c in configs})
        overload = (
            run_overload(texts, data_dir.resolve(), log_dir, args, extra_env)
            if args.overload
            else None
        )
    results = aggregate(rounds)
    targets = goals(results)
    payload = {
        "what": "closed-loop HTTP load on CPU: N clients with one request in flight each; "
        "qps = 200 responses per second of the measured window; p50/p99 over the 200s",
        "collection": collection,
        "texts": f"{texts_source}, one per request, cycled",
        "settings": {
            "levels": args.levels,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "order": "interleaved: " + ", ".join(c.name for c in configs),
            "search": {"mode": "dense", "k": 10},
            "server_env": {
                "quarry-off": {"QUARRY_SERVING__BATCHING": "false", **extra_env},
                "quarry-batch": {"QUARRY_SERVING__BATCHING": "true", **extra_env},
            },
            "infinity": {
                "version": infinity_version(args.infinity_venv)
                if "infinity" in args.configs
                else None,
                "command": " ".join(infinity_args(args.infinity_venv, Path("<bundled MiniLM>"), 0)),
            },
            "client": "httpx.AsyncClient per client on one event loop, in the process that "
            "starts the servers; it shares the machine's cores with the server",
        },
        "results": results,
        "overload": overload,
        "goals": targets,
    }
    path = write_result(args.name, payload, args.out)
    print_table(results)
    if overload is not None:
        statuses = {ep: r["status"] for ep, r in overload["results"].items()}
        print(f"\noverload ({args.overload_clients} clients): {statuses}")
    for g in targets:
        verdict = {True: "MET ", False: "MISS", None: "n/a "}[g["met"]]
        print(f"{verdict} {g['goal']}: {g['measured']}")
    print(f"wrote {path}")
    if overload is not None and not overload["only_200_503"]:
        logger.error(
            "overload: %d responses other than 200/503", overload["responses_other_than_200_503"]
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
