"""Request and response bodies of the v1 API (separate from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.collections import Metric
from core.documents import DocumentIn
from core.models import Collection, Job

JsonScalar = str | int | float | bool


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., examples=["papers"])
    embedder: str | None = Field(
        None, description="Model name or local path; default model if unset"
    )
    metric: Metric = "cosine"
    index_spec: str = Field("Flat", description="FAISS factory string used by compaction")
    lexical: bool = Field(True, description="Keep a BM25 index for lexical and hybrid search")
    description: str | None = None


class CollectionPublic(BaseModel):
    name: str
    embedder: str
    dim: int
    metric: str
    index_spec: str
    lexical: bool
    description: str | None
    manifest_version: int
    documents: dict[str, int] = Field(default_factory=dict)
    segments: int = 0
    vectors: int = 0
    created_at: datetime

    @classmethod
    def of(
        cls, c: Collection, *, documents: dict[str, int], segments: int, vectors: int
    ) -> CollectionPublic:
        return cls(
            name=c.name,
            embedder=c.embedder,
            dim=c.dim,
            metric=c.metric,
            index_spec=c.index_spec,
            lexical=c.lexical,
            description=c.description,
            manifest_version=c.manifest_version,
            documents=documents,
            segments=segments,
            vectors=vectors,
            created_at=c.created_at,
        )


class CollectionsPublic(BaseModel):
    data: list[CollectionPublic]
    count: int


class DocumentsIngest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(..., min_length=1)


class DocumentPublic(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    state: str
    created_at: datetime
    updated_at: datetime


class DocumentsDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(..., min_length=1)


class DeletedPublic(BaseModel):
    deleted: int


class JobPublic(BaseModel):
    id: str
    kind: str
    state: str
    collection: str | None = None
    total: int
    done: int
    skipped: int
    attempts: int
    params: dict[str, Any] = Field(default_factory=dict)
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            collection=job.collection_name,
            total=job.total,
            done=job.done,
            skipped=job.skipped,
            attempts=job.attempts,
            params=dict(job.params or {}),
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_s=job.duration_s,
        )


class IngestAccepted(BaseModel):
    job: JobPublic
    created: int
    updated: int
    unchanged: int


class CompactRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index_spec: str | None = Field(None, description="Override the collection's factory string")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str
    query: str = Field(..., min_length=1)
    k: int = Field(10, ge=1)
    filters: dict[str, JsonScalar | list[JsonScalar]] = Field(
        default_factory=dict, description="Metadata equality; a list means any of its values"
    )
    mode: Literal["dense", "lexical", "hybrid"] = Field(
        "dense", description="dense (FAISS), lexical (BM25) or hybrid (reciprocal rank fusion)"
    )
    rrf_k: int = Field(60, ge=1, description="k of reciprocal rank fusion (hybrid mode)")
    include_text: bool = True


class SearchHit(BaseModel):
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    collection: str
    data: list[SearchHit]
    timings: dict[str, float]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(..., min_length=1)
    model: str | None = None
    kind: Literal["query", "document"] = "document"
    normalize: bool = True


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]
    usage: dict[str, int]


class OpenAIEmbeddingsRequest(BaseModel):
    # OpenAI clients send extra fields (user, ...); accept and ignore them.
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: dict[str, int]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
