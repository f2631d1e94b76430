"""Search a collection by text."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import AuthorizerDep, ContainerDep, StateDep
from api.schemas import SearchHit, SearchRequest, SearchResponse
from core.errors import InvalidRequest
from service.search import Hit, RerankStage
from service.search import search as search_collection

router = APIRouter(prefix="/v1", tags=["search"])


# Fields a plain search does not have (first_stage_score, reranker) are left out of its
# response rather than sent as null: without a rerank stage the response is unchanged. Async,
# with the search itself on a worker thread: one thread hop per request, not two.
@router.post("/search", response_model_exclude_unset=True)
async def search(
    body: SearchRequest, c: ContainerDep, state: StateDep, auth: AuthorizerDep
) -> SearchResponse:
    """Dense, lexical or hybrid search with metadata filters and an optional rerank stage;
    hits and per-stage timings."""
    auth.check("read", body.collection)
    limits = c.settings.limits
    if body.k > limits.max_k:
        raise InvalidRequest(f"k={body.k} exceeds the limit of {limits.max_k}")
    if len(body.query) > limits.max_text_chars:
        raise InvalidRequest(f"The query exceeds {limits.max_text_chars} characters")
    stage = body.rerank
    result = await run_in_threadpool(
        search_collection,
        c,
        body.collection,
        body.query,
        k=body.k,
        filters=body.filters,
        mode=body.mode,
        rrf_k=body.rrf_k,
        rerank=RerankStage(stage.model, stage.candidates) if stage is not None else None,
    )
    for name, ms in result.timings.items():
        state.metrics.stage_duration.labels(name.removesuffix("_ms")).observe(ms / 1000.0)
    hits = [_hit(h, body.include_text) for h in result.hits]
    staged = {"reranker": result.reranker} if result.reranker is not None else {}
    return SearchResponse(collection=body.collection, data=hits, timings=result.timings, **staged)


def _hit(h: Hit, include_text: bool) -> SearchHit:
    staged = {"first_stage_score": h.first_stage_score} if h.first_stage_score is not None else {}
    return SearchHit(
        id=h.external_id,
        score=h.score,
        text=h.text if include_text else None,
        metadata=h.metadata,
        **staged,
    )
