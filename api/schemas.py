"""Request and response bodies of the v1 API (separate from the ORM models)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from core.collections import NAME_RE, Metric
from core.documents import DocumentIn
from core.models import DEFAULT_BM25_B, DEFAULT_BM25_K1, Collection, Job
from core.text import NO_NUL_PATTERN, CleanStr, clean_text, keys_as_property_names
from service.ctr_events import EventIn, ItemIn

#: A query or text to embed: no NUL, and not only whitespace.
NON_BLANK_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
#: A collection name, as :func:`core.collections.validate_name` checks it (``$`` is the end of
#: the text in JSON Schema and pydantic, unlike Python's ``re``).
NAME_PATTERN = NAME_RE.pattern
_INT64 = (-(2**63), 2**63 - 1)


def _collection_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"Invalid collection name {value!r}: use 1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit."
        )
    return value


def _as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they are UTC (``core.models.utcnow``)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _filter_scalar(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return value
        try:  # compared as a number, like the JSON it came from
            return float(value)
        except OverflowError:
            raise ValueError("a number too large to compare") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        return value
    raise ValueError("a filter value is a string, a number, a boolean or a list of them")


def _filter_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_filter_scalar(v) for v in value]
    return _filter_scalar(value)


def _texts_only(schema: dict[str, Any]) -> None:
    """OpenAI's ``input``, documented as what Quarry accepts: a text or a non-empty list."""
    texts = [v for v in schema["anyOf"] if v.get("type") == "string"]
    texts += [
        {**v, "minItems": 1}
        for v in schema["anyOf"]
        if v.get("type") == "array" and v["items"].get("type") == "string"
    ]
    schema["anyOf"] = texts
    schema["description"] = "A text or a list of texts (token ids are not supported)"


#: A query or a text to embed; whitespace-only ones are refused by the route (422).
NonBlankStr = Annotated[
    str,
    AfterValidator(clean_text),
    Field(min_length=1, json_schema_extra={"pattern": NON_BLANK_PATTERN}),
]
CollectionName = Annotated[
    str,
    AfterValidator(_collection_name),
    Field(json_schema_extra={"pattern": NAME_PATTERN}, examples=["papers"]),
]
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]
_SCALAR_SCHEMAS: list[dict[str, Any]] = [
    {"type": "string", "pattern": NO_NUL_PATTERN},
    {"type": "number"},
    {"type": "boolean"},
]
#: A filter's value: a scalar or a non-empty list of them ("any of"); an empty list is
#: refused by ``core.documents`` with a message of its own.
FilterValue = Annotated[
    Any,
    AfterValidator(_filter_value),
    WithJsonSchema(
        {
            "anyOf": [
                *_SCALAR_SCHEMAS,
                {"type": "array", "items": {"anyOf": _SCALAR_SCHEMAS}, "minItems": 1},
            ]
        }
    ),
]
FilterKey = Annotated[CleanStr, Field(json_schema_extra={"minLength": 1})]


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CollectionName
    embedder: CleanStr | None = Field(
        None, max_length=512, description="Model name or local path; default model if unset"
    )
    metric: Metric = "cosine"
    index_spec: CleanStr = Field(
        "Flat", min_length=1, max_length=256, description="FAISS factory string used by compaction"
    )
    lexical: bool = Field(True, description="Keep a BM25 index for lexical and hybrid search")
    bm25_k1: float = Field(
        DEFAULT_BM25_K1,
        ge=0.0,
        allow_inf_nan=False,
        description="BM25 term-frequency saturation k1 (>= 0), applied at query time",
    )
    bm25_b: float = Field(
        DEFAULT_BM25_B,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="BM25 document-length normalisation b (0 to 1), applied at query time",
    )
    description: CleanStr | None = None


class CollectionPublic(BaseModel):
    name: str
    embedder: str
    dim: int
    metric: str
    index_spec: str
    lexical: bool
    bm25_k1: float
    bm25_b: float
    description: str | None
    manifest_version: int
    documents: dict[str, int] = Field(default_factory=dict)
    segments: int = 0
    vectors: int = 0
    created_at: UtcDateTime

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
            bm25_k1=c.bm25_k1,
            bm25_b=c.bm25_b,
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
    created_at: UtcDateTime
    updated_at: UtcDateTime


class DocumentsDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[CleanStr, Field(min_length=1, max_length=512)]] = Field(..., min_length=1)


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
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
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

    index_spec: CleanStr | None = Field(
        None, min_length=1, max_length=256, description="Override the collection's factory string"
    )


class SearchRerank(BaseModel):
    """The rerank stage of a search: the first stage's top ``candidates`` reordered by a text
    reranker, the best ``k`` returned."""

    model_config = ConfigDict(extra="forbid")

    model: CleanStr | None = Field(
        None, max_length=512, description="A reranker; the server's default if unset"
    )
    candidates: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="First-stage hits to rerank (default 100, at most the server's "
        "QUARRY_RERANK__MAX_DOCUMENTS); the first stage fetches max(k, candidates)",
    )


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CleanStr = Field(..., min_length=1)
    query: NonBlankStr = Field(..., description="Not only whitespace")
    k: int = Field(10, ge=1, description="At most the server's QUARRY_LIMITS__MAX_K")
    filters: dict[FilterKey, FilterValue] = Field(
        default_factory=dict,
        description="Metadata equality; a list means any of its values",
        json_schema_extra=keys_as_property_names,
    )
    mode: Literal["dense", "lexical", "hybrid"] = Field(
        "dense", description="dense (FAISS), lexical (BM25) or hybrid (reciprocal rank fusion)"
    )
    rrf_k: int = Field(
        60, ge=1, le=1_000_000, description="k of reciprocal rank fusion (hybrid mode)"
    )
    include_text: bool = True
    rerank: SearchRerank | None = Field(
        None, description="Rerank the first stage's candidates with a text reranker"
    )


class SearchHit(BaseModel):
    id: str
    score: float = Field(..., description="The reranker's score with a rerank stage")
    text: str | None = None
    metadata: dict[str, Any]
    first_stage_score: float | None = Field(
        None, description="With a rerank stage only: the first stage's score"
    )


class SearchResponse(BaseModel):
    collection: str
    data: list[SearchHit]
    timings: dict[str, float]
    reranker: str | None = Field(None, description="With a rerank stage only: its reranker")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[NonBlankStr] = Field(
        ..., min_length=1, description="Texts, each not only whitespace"
    )
    model: CleanStr | None = Field(None, max_length=512)
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

    # OpenAI's request shape also allows token ids: they are parsed to be refused with a clear
    # 422, and left out of the documented schema (only texts are accepted).
    input: NonBlankStr | list[NonBlankStr] | list[int] | list[list[int]] = Field(
        ..., json_schema_extra=_texts_only
    )
    model: CleanStr | None = Field(None, max_length=512)
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


class Readiness(BaseModel):
    """``GET /readyz``: 200 when ready, 503 (same body) when not."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, Any]


class RerankDocument(BaseModel):
    """A document as an object (Cohere's form): its ``text``; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: NonBlankStr = Field(..., description="Not only whitespace")


class RerankRequest(BaseModel):
    """``POST /v1/rerank``, in the shape of Cohere's, TEI's and Infinity's rerank APIs."""

    model_config = ConfigDict(extra="forbid")

    query: NonBlankStr = Field(..., description="Not only whitespace")
    documents: list[NonBlankStr | RerankDocument] = Field(
        ...,
        min_length=1,
        description="Texts, or objects with a `text`; at most the server's "
        "QUARRY_RERANK__MAX_DOCUMENTS (413 beyond)",
    )
    top_n: int | None = Field(
        None, ge=1, strict=True, description="Return the best n (default: all)"
    )
    return_documents: bool = Field(False, description="Echo each result's text")
    model: CleanStr | None = Field(
        None, max_length=512, description="A reranker; the server's default if unset"
    )


class RerankedDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(..., description="Position of the document in the request")
    relevance_score: float = Field(..., description="Higher is more relevant (per query)")
    document: RerankedDocument | None = Field(None, description="With return_documents only")


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult] = Field(..., description="Best first; ties in request order")
    usage: dict[str, int]
    timings: dict[str, float]


# --- CTR: catalogue items, behaviour events, scoring --------------------------------------------

#: A user or item id: 1-512 characters, no NUL.
ExternalId = Annotated[CleanStr, Field(min_length=1, max_length=512)]


class ItemsUpsert(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(
        ..., min_length=1, description="At most the server's QUARRY_CTR__MAX_ITEMS (413 beyond)"
    )


class ItemsUpserted(BaseModel):
    created: int
    updated: int
    unchanged: int


class ItemPublic(BaseModel):
    id: str
    category: str | None
    metadata: dict[str, Any]
    created_at: UtcDateTime
    updated_at: UtcDateTime


class EventsIngest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(
        ..., min_length=1, description="At most the server's QUARRY_CTR__MAX_EVENTS (413 beyond)"
    )


class EventsAccepted(BaseModel):
    received: int
    stored: int = Field(..., description="New events (the others were already stored)")
    duplicates: int
    users: int = Field(..., description="Users with new events; their encodings are updated")


class EventPublic(BaseModel):
    id: str | None = Field(None, description="The client's event id, if it sent one")
    item_id: str
    timestamp: UtcDateTime
    rating: float | None
    label: int | None


class UserEventsPublic(BaseModel):
    user_id: str
    data: list[EventPublic] = Field(..., description="Newest first")
    count: int
    total: int = Field(..., description="Every stored event of the user")


class CTRScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: ExternalId
    items: list[ExternalId] = Field(
        ...,
        min_length=1,
        description="Candidate item ids; at most the server's QUARRY_CTR__MAX_SCORE_ITEMS "
        "(413 beyond); every one must be in the model's catalogue (422 unknown_items)",
    )
    model: CleanStr | None = Field(
        None, max_length=128, description="A deployed model's name; the server's default if unset"
    )


class CTRItemScore(BaseModel):
    item: str
    probability: float


class CTRScoreResponse(BaseModel):
    model: str
    kind: str
    version: str
    scores: list[CTRItemScore] = Field(..., description="In request order")
    history_length: int = Field(..., description="Behaviours in the user's encoded history")
    timings: dict[str, float]


class CTRModelPublic(BaseModel):
    name: str
    kind: str
    version: str
    state: str = Field(..., description="building, active, retired or failed")
    job_id: str | None
    users: int
    error: str | None
    created_at: UtcDateTime
    activated_at: UtcDateTime | None


class CTRModelsPublic(BaseModel):
    data: list[CTRModelPublic]
    count: int
