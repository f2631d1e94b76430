"""Behaviour events and the item catalogue: store them and read a user's history back (bulk
loads from files: :mod:`service.ctr_files`).

Events are idempotent: an event with a client ``id`` is stored once per id; one without is
stored once per ``(user, item, timestamp)``. Every insert also updates each of its users'
:class:`~core.models.EventUser` row in the same transaction, the rows locked in user order
before the events go in, so one user's events commit in id order and the BSE encoder's
"events after the last one encoded" never misses one. After the commit, the users with new
events get their encoded histories updated (:func:`service.ctr.queue_encoding`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.dataclasses import dataclass as pydantic_dataclass
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db import session_scope
from core.errors import InvalidRequest, NotFound
from core.models import Event, EventUser, Item, utcnow
from core.text import CleanStr, Metadata

if TYPE_CHECKING:
    from service.container import Container

__all__ = [
    "Behaviour",
    "EventIn",
    "EventsOutcome",
    "HistoryPage",
    "ItemIn",
    "ItemNotFound",
    "ItemsOutcome",
    "get_item",
    "ingest_events",
    "upsert_items",
    "user_history",
]

_CHUNK = 500  # rows per statement: bounded parameter lists on SQLite and Postgres
#: Event times Quarry accepts (a bound that also catches seconds read as milliseconds).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class ItemNotFound(NotFound):
    code = "item_not_found"


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a time without a zone is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: An ISO 8601 date and time (seconds, fraction and offset optional; no offset: UTC).
ISO_TIME = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
)


def from_epoch(value: float, *, unit: Literal["auto", "s", "ms"] = "auto") -> datetime:
    """A time from epoch seconds, or milliseconds (``auto``: a value above 1e11 is taken to
    be milliseconds, i.e. after the year 5138 in seconds)."""
    if not math.isfinite(value):
        raise ValueError(f"not a time: {value!r}")
    ms = unit == "ms" or (unit == "auto" and abs(value) > 1e11)
    try:
        return datetime.fromtimestamp(value / 1000 if ms else value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"not a time: {value!r}") from None


def from_iso(text: str) -> datetime:
    """A time from ISO 8601 text (``ISO_TIME``)."""
    if not ISO_TIME.fullmatch(text):
        raise ValueError(f"not an ISO 8601 date and time: {text[:40]!r}")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a valid date and time: {text[:40]!r}") from None


def _event_time_input(value: Any) -> Any:
    """What a client may send as a timestamp: ISO 8601 text or epoch seconds (milliseconds
    told apart by size); nothing else is coerced (no booleans, no numbers in strings)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, bool):
        raise ValueError("a timestamp is ISO 8601 text or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        return from_epoch(value)
    if isinstance(value, str):
        return from_iso(value)
    raise ValueError("a timestamp is ISO 8601 text or epoch seconds")


def _event_time(value: datetime) -> datetime:
    try:
        value = as_utc(value)
    except (OverflowError, ValueError):
        raise ValueError("a time that cannot be expressed in UTC") from None
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"event times must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return value


ExternalId = Annotated[CleanStr, Field(min_length=1, max_length=512)]
EventTime = Annotated[
    datetime,
    BeforeValidator(_event_time_input),
    AfterValidator(_event_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": ISO_TIME.pattern},
                {"type": "number", "description": "epoch seconds (or milliseconds)"},
            ],
            "description": f"Between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}; none: now",
        }
    ),
]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ItemIn:
    """A catalogue item: its id, a category (genre) and metadata."""

    id: ExternalId
    category: Annotated[CleanStr, Field(max_length=256)] | None = None
    metadata: Metadata = field(default_factory=dict)


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class EventIn:
    """One behaviour event. Without ``timestamp`` it happened now; send an ``id`` (or a
    timestamp) to make re-sending it harmless."""

    user_id: ExternalId
    item_id: ExternalId
    timestamp: EventTime | None = None
    rating: Annotated[float, Field(strict=True, allow_inf_nan=False)] | None = None
    label: Annotated[int, Field(strict=True, ge=0, le=1, description="1 click, 0 not")] | None = (
        None
    )
    #: Your id for the event: it is stored once per id.
    id: Annotated[CleanStr, Field(min_length=1, max_length=128)] | None = None


def dedup_key(event: EventIn, occurred_at: datetime) -> str:
    """The event's identity: its client id, else ``(user, item, time)``."""
    if event.id is not None:
        parts = ["id", event.id]
    else:
        parts = ["uit", event.user_id, event.item_id, occurred_at.isoformat()]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert(session: Session, model: type[Any]) -> Any:
    """The dialect's INSERT (for ``ON CONFLICT``): Postgres or SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(model)


# --- items -------------------------------------------------------------------------------------


@dataclass
class ItemsOutcome:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def upsert_items(c: Container, items: Sequence[ItemIn]) -> ItemsOutcome:
    """Create or update catalogue items (the last of repeated ids in one call wins)."""
    latest = {item.id: item for item in items}
    out = ItemsOutcome()
    now = utcnow()
    with session_scope(c.sessions) as s:
        for chunk in _chunks(list(latest)):
            existing = {
                row.external_id: row
                for row in s.scalars(select(Item).where(Item.external_id.in_(chunk)))
            }
            fresh = []
            for item_id in chunk:
                item, row = latest[item_id], existing.get(item_id)
                if row is None:
                    fresh.append(
                        {
                            "external_id": item.id,
                            "category": item.category,
                            "meta": item.metadata,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                elif row.category == item.category and (row.meta or {}) == item.metadata:
                    out.unchanged += 1
                else:
                    row.category, row.meta = item.category, item.metadata
                    out.updated += 1
            if fresh:
                stmt = _insert(s, Item).on_conflict_do_nothing(index_elements=["external_id"])
                res = s.execute(stmt.values(fresh).returning(Item.id))
                inserted = len(res.all())
                out.created += inserted
                out.unchanged += len(fresh) - inserted  # a concurrent call created them
    return out


def get_item(c: Container, item_id: str) -> Item:
    if "\x00" in item_id:  # never stored; Postgres refuses it in SQL
        raise ItemNotFound(f"Item {item_id!r} does not exist")
    with session_scope(c.sessions) as s:
        item = s.scalar(select(Item).where(Item.external_id == item_id))
    if item is None:
        raise ItemNotFound(f"Item {item_id!r} does not exist")
    return item


# --- events ------------------------------------------------------------------------------------


@dataclass
class EventsOutcome:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    #: Users with new events (their encoded histories are being updated).
    users: list[str] = field(default_factory=list)


def ingest_events(c: Container, events: Sequence[EventIn], *, encode: bool = True) -> EventsOutcome:
    """Store ``events`` (idempotent) and queue the update of their users' encoded histories
    (unless ``encode`` is false: a bulk load into a store no server shares)."""
    out = EventsOutcome(received=len(events))
    if not events:
        return out
    now = utcnow()
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        occurred = event.timestamp or now
        key = dedup_key(event, occurred)
        rows.setdefault(
            key,
            {
                "user_id": event.user_id,
                "item_id": event.item_id,
                "occurred_at": occurred,
                "rating": event.rating,
                "label": event.label,
                "client_id": event.id,
                "dedup_key": key,
                "created_at": now,
            },
        )
    users = sorted({r["user_id"] for r in rows.values()})
    with session_scope(c.sessions) as s:
        _lock_users(s, users, now)
        inserted: list[tuple[int, str, datetime]] = []
        stmt = _insert(s, Event).on_conflict_do_nothing(index_elements=["dedup_key"])
        for chunk in _chunks(list(rows.values())):
            res = s.execute(
                stmt.values(list(chunk)).returning(Event.id, Event.user_id, Event.occurred_at)
            )
            inserted.extend((int(i), str(u), as_utc(t)) for i, u, t in res.all())
        per_user: dict[str, tuple[int, int, datetime]] = {}
        for event_id, user, occurred in inserted:
            n, last, newest = per_user.get(user, (0, 0, EARLIEST))
            per_user[user] = (n + 1, max(last, event_id), max(newest, occurred))
        current = user_rows(s, list(per_user))  # locked above
        changes = []
        for user, (n, last, newest) in per_user.items():
            row = current[user]
            seen = as_utc(row.last_event_at) if row.last_event_at is not None else None
            changes.append(
                {
                    "user_id": user,
                    "n_events": row.n_events + n,
                    "last_event_id": max(row.last_event_id, last),
                    "last_event_at": newest if seen is None or newest > seen else seen,
                    "updated_at": now,
                }
            )
        if changes:
            s.execute(update(EventUser), changes)
    out.stored = len(inserted)
    out.duplicates = out.received - out.stored
    out.users = sorted(per_user)
    if encode and out.users:
        from service.ctr import queue_encoding

        queue_encoding(c, out.users)
    return out


def _lock_users(session: Session, users: Sequence[str], now: datetime) -> None:
    """Create the users' rows if missing and lock them all, in user order (one statement per
    chunk; the upsert takes each row's lock, so concurrent inserts for a user serialise)."""
    stmt = _insert(session, EventUser)
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id"], set_={"updated_at": stmt.excluded.updated_at}
    )
    for chunk in _chunks(users):
        values = [
            {"user_id": u, "n_events": 0, "last_event_id": 0, "updated_at": now} for u in chunk
        ]
        session.execute(stmt.values(values))


@dataclass
class HistoryEvent:
    id: int
    user_id: str
    item_id: str
    timestamp: datetime
    rating: float | None
    label: int | None
    client_id: str | None


@dataclass
class HistoryPage:
    user_id: str
    events: list[HistoryEvent]
    total: int


def user_history(c: Container, user_id: str, *, limit: int) -> HistoryPage:
    """A user's most recent events, newest first; ``total`` counts all of them. A user
    without events has an empty history (not an error)."""
    if limit < 1:
        raise InvalidRequest("limit must be at least 1")
    if "\x00" in user_id:  # never stored
        return HistoryPage(user_id, [], 0)
    with session_scope(c.sessions) as s:
        row = s.get(EventUser, user_id)
        if row is None:
            return HistoryPage(user_id, [], 0)
        events = s.scalars(
            select(Event)
            .where(Event.user_id == user_id)
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(limit)
        ).all()
        return HistoryPage(
            user_id,
            [
                HistoryEvent(
                    id=e.id,
                    user_id=e.user_id,
                    item_id=e.item_id,
                    timestamp=as_utc(e.occurred_at),
                    rating=e.rating,
                    label=e.label,
                    client_id=e.client_id,
                )
                for e in events
            ],
            int(row.n_events),
        )


# --- reads for the encoder (service.ctr) ------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """One event as the encoder sees it."""

    id: int
    item_id: str
    at: float  # epoch seconds
    rating: float | None = None
    label: int | None = None


_BEHAVIOUR_COLUMNS = (Event.id, Event.item_id, Event.occurred_at, Event.rating, Event.label)


def _behaviours(rows: Iterable[Any]) -> list[Behaviour]:
    return [
        Behaviour(int(i), str(item), as_utc(t).timestamp(), rating, label)
        for i, item, t, rating, label in rows
    ]


def recent_behaviours(
    session: Session, user_id: str, limit: int, *, upto: int | None = None
) -> list[Behaviour]:
    """The user's newest ``limit`` events (ids up to ``upto``), oldest first: ordered by
    time, then id."""
    stmt = select(*_BEHAVIOUR_COLUMNS).where(Event.user_id == user_id)
    if upto is not None:
        stmt = stmt.where(Event.id <= upto)
    rows = session.execute(
        stmt.order_by(Event.occurred_at.desc(), Event.id.desc()).limit(limit)
    ).all()
    return _behaviours(reversed(rows))


def behaviours_after(
    session: Session, user_id: str, after_id: int, limit: int, *, upto: int | None = None
) -> list[Behaviour]:
    """The user's events with an id above ``after_id`` (and up to ``upto``), in id order, at
    most ``limit``."""
    stmt = select(*_BEHAVIOUR_COLUMNS).where(Event.user_id == user_id, Event.id > after_id)
    if upto is not None:
        stmt = stmt.where(Event.id <= upto)
    return _behaviours(session.execute(stmt.order_by(Event.id).limit(limit)).all())


def user_rows(session: Session, users: Sequence[str]) -> dict[str, EventUser]:
    out: dict[str, EventUser] = {}
    for chunk in _chunks([u for u in users if "\x00" not in u]):
        out.update(
            {
                r.user_id: r
                for r in session.scalars(select(EventUser).where(EventUser.user_id.in_(chunk)))
            }
        )
    return out


def users_page(session: Session, after: str | None, limit: int) -> list[str]:
    """User ids with events, in order, after ``after`` (keyset pagination)."""
    stmt = select(EventUser.user_id).where(EventUser.n_events > 0)
    if after is not None:
        stmt = stmt.where(EventUser.user_id > after)
    return list(session.scalars(stmt.order_by(EventUser.user_id).limit(limit)))


def count_users(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(EventUser.n_events > 0)) or 0)
