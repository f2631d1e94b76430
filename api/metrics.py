"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "quarry_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "quarry_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )
        self.embedded_texts = Counter(
            "quarry_embedded_texts_total",
            "Texts embedded by the API (queries and /v1/embed inputs)",
            ["model"],
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "quarry_search_stage_duration_seconds",
            "Time spent per search stage",
            ["stage"],
            registry=self.registry,
        )
        self.jobs_enqueued = Counter(
            "quarry_jobs_enqueued_total", "Jobs submitted", ["kind"], registry=self.registry
        )
        self.models_loaded = Gauge(
            "quarry_models_loaded",
            "Embedding models loaded in this process",
            registry=self.registry,
        )
        self.queue_requests = Gauge(
            "quarry_queue_requests",
            "Requests waiting in a model's queue",
            ["queue"],
            registry=self.registry,
        )
        self.queue_tokens = Gauge(
            "quarry_queue_tokens",
            "Estimated tokens waiting in a model's queue",
            ["queue"],
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "quarry_batch_requests",
            "Requests merged into one batch",
            ["queue"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "quarry_batch_tokens",
            "Estimated tokens per batch",
            ["queue"],
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "quarry_batch_duration_seconds",
            "Time to run one batch",
            ["queue"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "quarry_queue_wait_seconds",
            "Time a request waited in a queue before its batch started",
            ["queue"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.queue_rejected = Counter(
            "quarry_queue_rejected_total",
            "Requests refused by a queue (reason: queue_full or deadline)",
            ["queue", "reason"],
            registry=self.registry,
        )

    # BatchObserver (core.batcher): what the model queues report.
    def queue_depth(self, name: str, items: int, cost: int) -> None:
        self.queue_requests.labels(name).set(items)
        self.queue_tokens.labels(name).set(cost)

    def batch_done(self, name: str, items: int, cost: int, seconds: float) -> None:
        self.batch_requests.labels(name).observe(items)
        self.batch_tokens.labels(name).observe(cost)
        self.batch_seconds.labels(name).observe(seconds)

    def waited(self, name: str, seconds: float) -> None:
        self.queue_wait.labels(name).observe(seconds)

    def rejected(self, name: str, reason: str) -> None:
        self.queue_rejected.labels(name, reason).inc()
