"""Embeddings: Quarry's ``/v1/embed`` and the OpenAI-compatible ``/v1/embeddings``."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter

from api.deps import ContainerDep, ReadScope, StateDep
from api.schemas import (
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbedding,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
)
from core.errors import InvalidRequest, PayloadTooLarge
from service.embed import EmbedKind, aembed

router = APIRouter(prefix="/v1", tags=["embed"])


async def _embed(
    c: ContainerDep,
    state: StateDep,
    texts: list[str],
    model: str | None,
    kind: EmbedKind,
    normalize: bool,
) -> tuple[str, np.ndarray, int]:
    limits = c.settings.limits
    if len(texts) > limits.max_embed_inputs:
        raise PayloadTooLarge(
            f"{len(texts)} inputs in one request; the limit is {limits.max_embed_inputs}"
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"Input {i} is empty")
        if len(text) > limits.max_text_chars:
            raise InvalidRequest(f"Input {i} exceeds {limits.max_text_chars} characters")
    out = await aembed(c, texts, model=model, kind=kind, normalize=normalize)
    state.metrics.embedded_texts.labels(out.model).inc(len(texts))
    return out.model, out.vectors, out.tokens


@router.post("/embed", dependencies=[ReadScope])
async def embed(body: EmbedRequest, c: ContainerDep, state: StateDep) -> EmbedResponse:
    """Embed texts as queries or documents.

    Concurrent requests to one model are batched together; a full queue answers 503
    ``overloaded`` with ``Retry-After``."""
    name, vectors, tokens = await _embed(
        c, state, body.inputs, body.model, body.kind, body.normalize
    )
    return EmbedResponse(
        model=name,
        dim=int(vectors.shape[1]),
        embeddings=vectors.tolist(),
        usage={"prompt_tokens": tokens, "total_tokens": tokens},
    )


@router.post("/embeddings", dependencies=[ReadScope])
async def openai_embeddings(
    body: OpenAIEmbeddingsRequest, c: ContainerDep, state: StateDep
) -> OpenAIEmbeddingsResponse:
    """OpenAI-compatible embeddings (works with the official ``openai`` client)."""
    raw = body.input
    if isinstance(raw, str):
        texts = [raw]
    elif raw and all(isinstance(x, str) for x in raw):
        texts = [str(x) for x in raw]
    else:
        raise InvalidRequest(
            "`input` must be a string or a list of strings; token ids are not supported"
        )
    name, vectors, tokens = await _embed(c, state, texts, body.model, "document", True)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise InvalidRequest(
            f"Model {name!r} produces {vectors.shape[1]}-dim vectors; `dimensions` "
            f"{body.dimensions} is not supported"
        )
    data: list[OpenAIEmbedding] = []
    for i, vec in enumerate(vectors):
        if body.encoding_format == "base64":
            payload: list[float] | str = base64.b64encode(vec.astype("<f4").tobytes()).decode(
                "ascii"
            )
        else:
            payload = vec.tolist()
        data.append(OpenAIEmbedding(index=i, embedding=payload))
    return OpenAIEmbeddingsResponse(
        data=data, model=name, usage={"prompt_tokens": tokens, "total_tokens": tokens}
    )
