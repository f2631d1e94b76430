"""Behaviour events and catalogue items from files: CSV, TSV (a header line first) or JSON
lines, gzipped too, with the columns named as options; and the bulk loads behind
``quarry events load`` and ``quarry events items``, batch by batch through the same use cases
as the API (:func:`service.ctr_events.ingest_events`, :func:`~service.ctr_events.upsert_items`).
"""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pydantic import ValidationError
from tqdm import tqdm

from core.errors import InvalidRequest
from core.jsonl import iter_jsonl, open_text
from service.ctr_events import EventIn, ItemIn, from_epoch, ingest_events, upsert_items

if TYPE_CHECKING:
    from service.container import Container

__all__ = [
    "EventColumns",
    "FileFormat",
    "ItemColumns",
    "LoadReport",
    "TimeUnit",
    "check_format",
    "check_time_unit",
    "count_records",
    "load_events",
    "load_items",
    "parse_time",
    "read_event_file",
    "read_item_file",
]

FileFormat = Literal["auto", "csv", "tsv", "jsonl"]
TimeUnit = Literal["auto", "s", "ms", "iso"]


def check_format(value: str) -> FileFormat:
    """``value`` as a :data:`FileFormat`, or :class:`InvalidRequest` naming the valid ones."""
    valid = get_args(FileFormat)
    if value not in valid:
        raise InvalidRequest(f"Unknown format {value!r}. Valid formats: {', '.join(valid)}")
    return cast(FileFormat, value)


def check_time_unit(value: str) -> TimeUnit:
    """``value`` as a :data:`TimeUnit`, or :class:`InvalidRequest` naming the valid ones."""
    valid = get_args(TimeUnit)
    if value not in valid:
        raise InvalidRequest(f"Unknown time unit {value!r}. Valid units: {', '.join(valid)}")
    return cast(TimeUnit, value)


@dataclass(frozen=True)
class EventColumns:
    """Which column (or JSON key) holds each field. ``None``: the default name, used when the
    file has it; a name given explicitly must be there."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    label: str | None = None
    id: str | None = None

    DEFAULTS = {
        "user": "user_id",
        "item": "item_id",
        "time": "timestamp",
        "rating": "rating",
        "label": "label",
        "id": "id",
    }


@dataclass(frozen=True)
class ItemColumns:
    id: str | None = None
    category: str | None = None
    #: Further columns copied into the item's metadata (all other keys for JSON lines).
    metadata: tuple[str, ...] = ()

    DEFAULTS = {"id": "item_id", "category": "category"}


def _format_of(path: Path, fmt: FileFormat) -> Literal["csv", "tsv", "jsonl"]:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last == ".csv":
        return "csv"
    if last in (".tsv", ".tab"):
        return "tsv"
    if last in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise InvalidRequest(
        f"Cannot tell the format of {path.name} from its name: pass --format csv, tsv or jsonl"
    )


def _records(path: Path, fmt: FileFormat) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of a CSV/TSV (header line first) or JSON-lines file."""
    kind = _format_of(path, fmt)
    if kind == "jsonl":
        for lineno, value in iter_jsonl(path, what="Events file"):
            if not isinstance(value, dict):
                raise InvalidRequest(f"{path}:{lineno}: expected a JSON object")
            yield lineno, value
        return
    if not path.is_file():
        raise InvalidRequest(f"File not found: {path}")
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh, delimiter="," if kind == "csv" else "\t")
            for record in reader:
                yield reader.line_num, dict(record)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidRequest(f"{path}: not a readable {kind.upper()} file ({exc})") from exc


def count_records(path: Path, fmt: FileFormat = "auto") -> int | None:
    """Records in a plain (not gzipped) file by counting lines; ``None`` when unknown."""
    try:
        with path.open("rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                return None
            fh.seek(0)
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None
    return max(0, lines - (0 if _format_of(path, fmt) == "jsonl" else 1))


def _pick(
    record: dict[str, Any], where: str, explicit: str | None, default: str, required: bool
) -> Any:
    name = explicit if explicit is not None else default
    if name not in record:
        if required or explicit is not None:
            raise InvalidRequest(f"{where}: no column {name!r} (columns: {', '.join(record)})")
        return None
    value = record[name]
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def parse_time(value: Any, unit: TimeUnit) -> datetime:
    """A timestamp from a file: epoch seconds or milliseconds, or ISO 8601 text (a date
    alone too)."""
    if isinstance(value, str) and unit != "iso":
        try:
            value = float(value)
        except ValueError:
            if unit != "auto":
                raise ValueError(f"expected a number of {unit}, got {value!r}") from None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        return from_epoch(float(value), unit="auto" if unit == "iso" else unit)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    raise ValueError(f"not a time: {value!r}")


def _invalid(where: str, what: str, exc: ValidationError) -> InvalidRequest:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return InvalidRequest(f"{where}: invalid {what} ({problems})")


def read_event_file(
    path: Path,
    columns: EventColumns = EventColumns(),
    *,
    fmt: FileFormat = "auto",
    time_unit: TimeUnit = "auto",
) -> Iterator[EventIn]:
    """Events from a CSV, TSV (header line first) or JSON-lines file (gzip too). Errors name
    the file and line."""
    d = EventColumns.DEFAULTS
    for lineno, rec in _records(Path(path), fmt):
        where = f"{path}:{lineno}"
        try:
            raw_time = _pick(rec, where, columns.time, d["time"], False)
            rating = _pick(rec, where, columns.rating, d["rating"], False)
            label = _pick(rec, where, columns.label, d["label"], False)
            client_id = _pick(rec, where, columns.id, d["id"], False)
            yield EventIn(
                user_id=str(_pick(rec, where, columns.user, d["user"], True)),
                item_id=str(_pick(rec, where, columns.item, d["item"], True)),
                timestamp=None if raw_time is None else parse_time(raw_time, time_unit),
                rating=None if rating is None else float(rating),
                label=None if label is None else int(float(label)),
                id=None if client_id is None else str(client_id),
            )
        except ValidationError as exc:
            raise _invalid(where, "event", exc) from exc
        except ValueError as exc:
            raise InvalidRequest(f"{where}: {exc}") from exc


def read_item_file(
    path: Path,
    columns: ItemColumns = ItemColumns(),
    *,
    fmt: FileFormat = "auto",
) -> Iterator[ItemIn]:
    """Catalogue items from a CSV, TSV or JSON-lines file. JSON lines keep a ``metadata``
    object as it is; other columns go into metadata only when named."""
    d = ItemColumns.DEFAULTS
    for lineno, rec in _records(Path(path), fmt):
        where = f"{path}:{lineno}"
        item_id = _pick(rec, where, columns.id, d["id"], True)
        category = _pick(rec, where, columns.category, d["category"], False)
        metadata = dict(rec.get("metadata") or {}) if isinstance(rec.get("metadata"), dict) else {}
        for name in columns.metadata:
            if name not in rec:
                raise InvalidRequest(f"{where}: no column {name!r} (columns: {', '.join(rec)})")
            metadata[name] = rec[name]
        try:
            yield ItemIn(
                id=str(item_id),
                category=None if category is None else str(category),
                metadata=metadata,
            )
        except ValidationError as exc:
            raise _invalid(where, "item", exc) from exc


@dataclass
class LoadReport:
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    users: int = 0
    seconds: float = 0.0


def load_events(
    c: Container,
    events: Iterable[EventIn],
    *,
    batch_size: int = 5000,
    total: int | None = None,
    show_progress: bool = True,
) -> LoadReport:
    """Store events in batches through :func:`ingest_events`, with a progress bar.

    Histories are encoded as the events arrive when the store is shared (Redis): the BSE
    workers pick the users up. With the embedded store (a dict in one process) nothing is
    queued from here: the server encodes each user from the database on first use.
    """

    from service.ctr import runtime

    encode = runtime(c).store.shared
    report = LoadReport()
    users: set[str] = set()
    t0 = time.perf_counter()
    it = iter(events)
    with tqdm(total=total, unit="event", desc="events", disable=not show_progress) as bar:
        while batch := list(itertools.islice(it, batch_size)):
            outcome = ingest_events(c, batch, encode=encode)
            report.records += outcome.received
            report.stored += outcome.stored
            report.duplicates += outcome.duplicates
            users.update(outcome.users)
            bar.update(len(batch))
    report.users = len(users)
    report.seconds = time.perf_counter() - t0
    return report


def load_items(
    c: Container,
    items: Iterable[ItemIn],
    *,
    batch_size: int = 5000,
    total: int | None = None,
    show_progress: bool = True,
) -> LoadReport:
    """Upsert catalogue items in batches through :func:`upsert_items`, with a progress bar."""

    report = LoadReport()
    t0 = time.perf_counter()
    it = iter(items)
    with tqdm(total=total, unit="item", desc="items", disable=not show_progress) as bar:
        while batch := list(itertools.islice(it, batch_size)):
            outcome = upsert_items(c, batch)
            report.records += len(batch)
            report.created += outcome.created
            report.updated += outcome.updated
            report.unchanged += outcome.unchanged
            bar.update(len(batch))
    report.seconds = time.perf_counter() - t0
    return report
