"""CTR: the item catalogue, behaviour events, user histories, scoring and deployed models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from api.deps import ContainerDep, ReadScope, WriteScope
from api.schemas import (
    CTRItemScore,
    CTRModelPublic,
    CTRModelsPublic,
    CTRScoreRequest,
    CTRScoreResponse,
    EventPublic,
    EventsAccepted,
    EventsIngest,
    ItemPublic,
    ItemsUpsert,
    ItemsUpserted,
    UserEventsPublic,
)
from core.errors import InvalidRequest, PayloadTooLarge
from core.text import NO_NUL_PATTERN
from service import ctr as use
from service import ctr_events as events

router = APIRouter(prefix="/v1", tags=["ctr"])

# Ids may hold any character but NUL: "/" included, sent as is or as %2F.
ItemId = Annotated[str, Path(pattern=NO_NUL_PATTERN, description='The item\'s id; "/" is allowed')]
UserId = Annotated[str, Path(pattern=NO_NUL_PATTERN, description='The user\'s id; "/" is allowed')]


@router.post("/items", dependencies=[WriteScope])
def upsert_items(body: ItemsUpsert, c: ContainerDep) -> ItemsUpserted:
    """Create or update catalogue items (id, category, metadata)."""
    limit = c.settings.ctr.max_items
    if len(body.items) > limit:
        raise PayloadTooLarge(f"{len(body.items)} items in one request; the limit is {limit}")
    out = events.upsert_items(c, body.items)
    return ItemsUpserted(created=out.created, updated=out.updated, unchanged=out.unchanged)


@router.get("/items/{item_id:path}", dependencies=[ReadScope])
def get_item(item_id: ItemId, c: ContainerDep) -> ItemPublic:
    """Fetch one catalogue item."""
    item = events.get_item(c, item_id)
    return ItemPublic(
        id=item.external_id,
        category=item.category,
        metadata=dict(item.meta or {}),
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


@router.post("/events", dependencies=[WriteScope])
def ingest_events(body: EventsIngest, c: ContainerDep) -> EventsAccepted:
    """Store behaviour events (idempotent on the event id, else on user, item and time); the
    users' encoded histories are updated in the background."""
    limit = c.settings.ctr.max_events
    if len(body.events) > limit:
        raise PayloadTooLarge(f"{len(body.events)} events in one request; the limit is {limit}")
    out = events.ingest_events(c, body.events)
    return EventsAccepted(
        received=out.received, stored=out.stored, duplicates=out.duplicates, users=len(out.users)
    )


@router.get("/users/{user_id:path}/events", dependencies=[ReadScope])
def user_events(
    user_id: UserId,
    c: ContainerDep,
    limit: Annotated[int, Query(ge=1, description="At most QUARRY_CTR__MAX_HISTORY_PAGE")] = 50,
) -> UserEventsPublic:
    """A user's most recent events, newest first (empty for a user without events)."""
    most = c.settings.ctr.max_history_page
    if limit > most:
        raise InvalidRequest(f"limit={limit} exceeds the limit of {most}")
    page = events.user_history(c, user_id, limit=limit)
    data = [
        EventPublic(
            id=e.client_id, item_id=e.item_id, timestamp=e.timestamp, rating=e.rating, label=e.label
        )
        for e in page.events
    ]
    return UserEventsPublic(user_id=page.user_id, data=data, count=len(data), total=page.total)


@router.post("/ctr/score", dependencies=[ReadScope])
async def score(body: CTRScoreRequest, c: ContainerDep) -> CTRScoreResponse:
    """Click probabilities of candidate items for a user, from the user's encoded history."""
    # Async with the use case on a worker thread: one thread hop (a sync route takes two).
    result = await run_in_threadpool(use.score, c, body.user_id, body.items, model=body.model)
    return CTRScoreResponse(
        model=result.model,
        kind=result.kind,
        version=result.version,
        scores=[
            CTRItemScore(item=item, probability=float(p))
            for item, p in zip(result.items, result.probabilities, strict=True)
        ],
        history_length=result.history_length,
        timings=result.timings,
    )


@router.get("/ctr/models", dependencies=[ReadScope])
def list_models(c: ContainerDep) -> CTRModelsPublic:
    """Deployed CTR models, newest first (state building, active, retired or failed)."""
    data = [
        CTRModelPublic(
            name=d.name,
            kind=d.kind,
            version=d.version,
            state=d.state,
            job_id=d.job_id,
            users=d.users,
            error=d.error,
            created_at=d.created_at,
            activated_at=d.activated_at,
        )
        for d in use.list_deployments(c)
    ]
    return CTRModelsPublic(data=data, count=len(data))
