"""All of Quarry's configuration, in one place.

Every setting is read from the environment with the ``QUARRY_`` prefix (nested sections use
``__``, e.g. ``QUARRY_LIMITS__MAX_BATCH_DOCS=500``) or from a ``.env`` file. Nothing reads the
environment at import time: call :func:`get_settings` (cached) or build ``Settings()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TaskMode = Literal["inline", "celery"]


class Limits(BaseModel):
    """Request-size and batch limits enforced at the API edge."""

    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_batch_docs: int = Field(2048, ge=1)
    max_text_chars: int = Field(100_000, ge=1)
    max_embed_inputs: int = Field(512, ge=1)
    max_k: int = Field(1000, ge=1)


class EmbedderSettings(BaseModel):
    """Defaults for text embedding."""

    default_model: str = "all-MiniLM-L6-v2"
    # Models that API clients may name, besides the default and the packaged ones (local
    # directories included). Clients never get to load an arbitrary path.
    allowed_models: list[str] = Field(default_factory=list)
    device: str = "auto"
    # Token budget for one forward pass: batches hold sequences until
    # (longest sequence in the batch x batch size) would exceed it.
    batch_tokens: int = Field(16_384, ge=64)
    max_batch_size: int = Field(256, ge=1)
    preload: bool = True
    # torch.compile LLM embedders at load (sentence-transformers models are unaffected):
    # 1.5-1.7x the eager engine for SmolLM2 on an H200, after ~2 minutes of compilation.
    compile: bool = False


class RerankSettings(BaseModel):
    """Rerankers: the default model, the allow-list, batching and request limits."""

    # Used when a request names no model: the late-interaction projection over the bundled
    # MiniLM that ships with Quarry, trained on the Cranfield judgments (redistributable).
    # Empty: the bi-encoder stand-in over the default embedder.
    default_model: str = "quarry-li-cranfield"
    # Models API clients may name besides the default and the packaged ones.
    allowed_models: list[str] = Field(default_factory=list)
    device: str = "auto"
    batch_tokens: int | None = Field(None, ge=64)
    max_batch_size: int = Field(256, ge=1)
    # Request limits of /v1/rerank and the search rerank stage.
    max_documents: int = Field(1000, ge=1)
    max_query_chars: int = Field(4_000, ge=1)
    max_document_chars: int = Field(20_000, ge=1)
    # Load the default reranker at startup; a cross-encoder on CUDA also captures its CUDA
    # graphs for batches up to 128 pairs x 256 tokens then (64 graphs, 4.6 s on an H200),
    # which the first requests needing each batch shape would otherwise pay (60-160 ms each).
    preload: bool = False


class CTRSettings(BaseModel):
    """CTR scoring, behaviour events and the per-user encoded histories (``QUARRY_CTR__*``)."""

    # The deployment a score request naming no model gets (`quarry ctr deploy DIR --name NAME`).
    default_model: str = "default"
    # Where encoded histories live: a redis:// URL. Unset: QUARRY_REDIS_URL, else the broker
    # when it is Redis, else a store inside the process (the embedded mode).
    store_url: str | None = None
    # Where served CTR models run: cpu (they are small; scoring gathers, it hardly multiplies),
    # cuda, cuda:N or auto.
    device: str = "cpu"
    # Request limits (413 beyond): candidates per score call, events and items per call.
    max_score_items: int = Field(1000, ge=1)
    max_events: int = Field(10_000, ge=1)
    max_items: int = Field(10_000, ge=1)
    # Most events of one history read back by GET /v1/users/{id}/events.
    max_history_page: int = Field(1000, ge=1)
    # A history is encoded from its newest this-many events when it is built from the
    # database (a rebuild, a user whose state is missing or stale at request time).
    max_history_events: int = Field(10_000, ge=1)
    # New events of a user are encoded after this delay, so that a burst is one update.
    bse_delay_s: float = Field(1.0, ge=0)
    # How long an API process trusts its view of which deployment is active (<= 1 s: a new
    # deployment serves everywhere within it).
    deployment_cache_s: float = Field(1.0, ge=0, le=1.0)
    # States of a retired model version expire this long after the switch (requests that
    # resolved the old version just before it finish with it).
    retired_state_ttl_s: float = Field(600.0, ge=0)
    # Users encoded per round of a rebuild (progress, lease and cancellation checks).
    rebuild_batch_users: int = Field(256, ge=1)


class IndexSettings(BaseModel):
    """Segment and compaction defaults."""

    segment_max_docs: int = Field(50_000, ge=1)
    default_spec: str = "Flat"
    use_gpu: bool = True


class JobSettings(BaseModel):
    """Leases, the reaper and clean-up of background jobs."""

    # A running job's worker renews its lease every lease_s / 3; a job whose lease is past
    # is taken to have lost its worker and is dispatched again.
    lease_s: float = Field(30.0, gt=0)
    # How often the reaper looks for expired leases and lost messages.
    reap_interval_s: float = Field(10.0, gt=0)
    # A job still `queued` this long after it was handed to the broker lost its message.
    requeue_after_s: float = Field(300.0, gt=0)
    # Attempts (runs started) before a job is marked failed for good.
    max_attempts: int = Field(5, ge=1)
    # Temp and unreferenced segment directories and retired segments are removed once they
    # are this old (readers may still hold a retired segment's manifest until then).
    cleanup_grace_s: float = Field(600.0, ge=0)
    cleanup_interval_s: float = Field(60.0, gt=0)


class ServingSettings(BaseModel):
    """Online request batching and backpressure (``QUARRY_SERVING__*``).

    Every online model call (query embedding in search, ``/v1/embed``, ``/v1/embeddings``,
    ``/v1/rerank``) goes through one queue per model: concurrent requests are merged into
    batches, and a full queue answers 503 with ``Retry-After`` at once. Costs are estimated
    tokens (characters / 4 + 2 per text, at most the model's sequence length).
    """

    batching: bool = True
    # A batch closes when it holds this many estimated tokens or requests ...
    batch_tokens: int = Field(16_384, ge=64)
    max_batch_requests: int = Field(256, ge=1)
    # ... or when its oldest request has waited this long while the model was busy (an idle
    # model takes a request at once).
    max_wait_ms: float = Field(5.0, ge=0)
    # Estimated tokens (query + document per pair) of one merged rerank batch.
    rerank_batch_tokens: int = Field(65_536, ge=64)
    # Bounded queue: more requests or estimated tokens than this waiting -> 503 overloaded.
    max_queue_requests: int = Field(1024, ge=1)
    max_queue_tokens: int = Field(262_144, ge=64)
    # A request not answered within this many seconds fails with 503 deadline_exceeded; a
    # model with waiting work and no completed batch for this long makes /readyz fail.
    timeout_s: float = Field(10.0, gt=0)
    retry_after_s: int = Field(1, ge=1)
    # Worker threads per queue: on a GPU two let one batch be prepared while the other runs;
    # on a CPU that overlap buys nothing (the same cores do both) and a second batch waiting
    # behind the first only lengthens the queue, so unset means 2 on CUDA and 1 on a CPU.
    workers: int | None = Field(None, ge=1, le=8)
    # Threads for the blocking routes (search, rerank, ingest); they wait on the queues.
    threads: int = Field(128, ge=1)


AuthMode = Literal["auto", "on", "off"]


class AuthSettings(BaseModel):
    """API keys (``QUARRY_AUTH__*``). ``mode``: ``auto`` is open only while no key was ever
    configured (a static key or any ``api_keys`` row, revoked included), ``on`` always needs a
    key, ``off`` is open (refused with ``QUARRY_ENV=prod``)."""

    mode: AuthMode = "auto"
    # Revocations and new keys are seen by every API process within this many seconds.
    cache_s: float = Field(0.5, ge=0, le=1.0)
    # Routes that are open even when auth is on (``/healthz`` always is).
    open_metrics: bool = True
    open_docs: bool = True


class Settings(BaseSettings):
    """Quarry settings. The defaults give the embedded single-process mode."""

    model_config = SettingsConfigDict(
        env_prefix="QUARRY_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    env: Literal["dev", "test", "prod"] = "dev"
    data_dir: Path = Path(".quarry")
    database_url: str | None = None
    # None means embedded: tasks run in-process on a worker thread.
    broker_url: str | None = None
    result_backend: str | None = None
    redis_url: str | None = None
    task_mode: TaskMode | None = None
    # Comma-separated in the environment (QUARRY_API_KEYS=key1,key2).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    log_json: bool = False
    limits: Limits = Field(default_factory=Limits)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    ctr: CTRSettings = Field(default_factory=CTRSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.task_mode == "celery" and not self.broker_url:
            raise ValueError(
                "QUARRY_TASK_MODE=celery needs QUARRY_BROKER_URL (e.g. redis://localhost:6379/0)"
            )
        if self.env == "prod":
            if self.auth.mode == "off":
                raise ValueError(
                    "QUARRY_AUTH__MODE=off would leave the API open: not allowed with "
                    "QUARRY_ENV=prod (use auto or on, and create a key with `quarry keys create`)"
                )
            weak = [k for k in self.api_keys if len(k) < 16 or k in {"changeme", "secret", "dev"}]
            if weak:
                raise ValueError(
                    "API keys must be at least 16 characters and not a default outside dev"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL; embedded SQLite under ``data_dir`` when none is set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'quarry.db').resolve()}"

    @property
    def resolved_task_mode(self) -> TaskMode:
        """``celery`` when a broker is configured, ``inline`` otherwise (unless set)."""
        if self.task_mode:
            return self.task_mode
        return "celery" if self.broker_url else "inline"

    @property
    def is_embedded(self) -> bool:
        return self.database_url is None or self.resolved_database_url.startswith("sqlite")

    @property
    def segments_dir(self) -> Path:
        return self.data_dir / "segments"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()
