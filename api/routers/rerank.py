"""Rerank documents for a query (``POST /v1/rerank``, Cohere/TEI/Infinity-shaped)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import ContainerDep, ReadScope
from api.schemas import (
    RerankDocument,
    RerankedDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
)
from service.rerank import rerank as rerank_documents

router = APIRouter(prefix="/v1", tags=["rerank"])


# ``document`` is sent only with return_documents (as Cohere does), not as null. The route is
# async and sends only the use case to a worker thread: a sync route would take a second
# thread hop for FastAPI's check of the response.
@router.post("/rerank", dependencies=[ReadScope], response_model_exclude_none=True)
async def rerank(body: RerankRequest, c: ContainerDep) -> RerankResponse:
    """Order documents by relevance to the query: indices into `documents` with scores, best
    first, the best `top_n` of them."""
    texts = [d.text if isinstance(d, RerankDocument) else d for d in body.documents]
    out = await run_in_threadpool(
        rerank_documents, c, body.query, texts, model=body.model, top_n=body.top_n
    )
    results = [
        RerankResult(
            index=i,
            relevance_score=score,
            document=RerankedDocument(text=texts[i]) if body.return_documents else None,
        )
        for i, score in zip(out.indices, out.scores, strict=True)
    ]
    return RerankResponse(
        model=out.model, results=results, usage={"documents": out.documents}, timings=out.timings
    )
