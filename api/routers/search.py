"""Search a collection by text."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AuthorizerDep, ContainerDep, StateDep
from api.schemas import SearchHit, SearchRequest, SearchResponse
from core.errors import InvalidRequest

router = APIRouter(prefix="/v1", tags=["search"])


@router.post("/search")
def search(
    body: SearchRequest, c: ContainerDep, state: StateDep, auth: AuthorizerDep
) -> SearchResponse:
    """Dense, lexical or hybrid search with metadata filters; hits and per-stage timings."""
    auth.check("read", body.collection)
    limits = c.settings.limits
    if body.k > limits.max_k:
        raise InvalidRequest(f"k={body.k} exceeds the limit of {limits.max_k}")
    if len(body.query) > limits.max_text_chars:
        raise InvalidRequest(f"The query exceeds {limits.max_text_chars} characters")
    result = c.searcher.search(
        body.collection,
        body.query,
        k=body.k,
        filters=body.filters,
        mode=body.mode,
        rrf_k=body.rrf_k,
    )
    for stage, ms in result.timings.items():
        state.metrics.stage_duration.labels(stage.removesuffix("_ms")).observe(ms / 1000.0)
    hits = [
        SearchHit(
            id=h.external_id,
            score=h.score,
            text=h.text if body.include_text else None,
            metadata=h.metadata,
        )
        for h in result.hits
    ]
    return SearchResponse(collection=body.collection, data=hits, timings=result.timings)
