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
