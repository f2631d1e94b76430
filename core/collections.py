"""Collection records: create, look up, list and delete."""

from __future__ import annotations

import math
import re
from typing import Literal, get_args

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import CollectionExists, CollectionNotFound, InvalidRequest
from core.models import DEFAULT_BM25_B, DEFAULT_BM25_K1, Collection, DocState, Document

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Vector similarity of a collection; the one list every layer uses.
Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = get_args(Metric)


def check_metric(metric: str) -> Metric:
    """Return ``metric`` typed as :data:`Metric`, or raise :class:`InvalidRequest`."""
    if metric not in METRICS:
        raise InvalidRequest(f"Invalid metric {metric!r}. Valid metrics: {', '.join(METRICS)}")
    return metric  # type: ignore[return-value]


def check_bm25(k1: float, b: float) -> tuple[float, float]:
    """``(k1, b)`` as floats if they are valid BM25 parameters, else :class:`InvalidRequest`.

    ``k1`` (term-frequency saturation) must be a finite number >= 0 and ``b`` (length
    normalisation) between 0 and 1.
    """
    for name, value in (("bm25_k1", k1), ("bm25_b", b)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{name} must be a number, got {value!r}")
    k1, b = float(k1), float(b)
    if not (math.isfinite(k1) and k1 >= 0.0):
        raise InvalidRequest(f"Invalid bm25_k1 {k1!r}: it must be a finite number >= 0")
    if not (math.isfinite(b) and 0.0 <= b <= 1.0):
        raise InvalidRequest(f"Invalid bm25_b {b!r}: it must be between 0 and 1")
    return k1, b


def validate_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"Invalid collection name {name!r}: use 1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit."
        )


def create_collection(
    session: Session,
    *,
    name: str,
    embedder: str,
    dim: int,
    metric: str = "cosine",
    index_spec: str = "Flat",
    lexical: bool = True,
    bm25_k1: float = DEFAULT_BM25_K1,
    bm25_b: float = DEFAULT_BM25_B,
    description: str | None = None,
) -> Collection:
    """Insert a collection; raises :class:`CollectionExists` if the name is taken."""
    validate_name(name)
    check_metric(metric)
    bm25_k1, bm25_b = check_bm25(bm25_k1, bm25_b)
    if session.scalar(select(Collection.id).where(Collection.name == name)) is not None:
        raise CollectionExists(f"Collection {name!r} already exists")
    coll = Collection(
        name=name,
        embedder=embedder,
        dim=dim,
        metric=metric,
        index_spec=index_spec,
        lexical=lexical,
        bm25_k1=bm25_k1,
        bm25_b=bm25_b,
        description=description,
        manifest_version=0,
    )
    session.add(coll)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create won the race
        raise CollectionExists(f"Collection {name!r} already exists") from exc
    return coll


def get_collection(session: Session, name: str) -> Collection:
    if not NAME_RE.fullmatch(name):  # cannot exist; and Postgres refuses some (NUL) in SQL
        raise CollectionNotFound(f"Collection {name!r} does not exist")
    coll = session.scalar(select(Collection).where(Collection.name == name))
    if coll is None:
        raise CollectionNotFound(f"Collection {name!r} does not exist")
    return coll


def list_collections(session: Session) -> list[Collection]:
    return list(session.scalars(select(Collection).order_by(Collection.name)))


def document_counts(session: Session, collection_id: int) -> dict[str, int]:
    """Live documents per state (pending, indexed)."""
    rows = session.execute(
        select(Document.state, func.count())
        .where(Document.collection_id == collection_id, Document.state != DocState.DELETED)
        .group_by(Document.state)
    ).all()
    counts = {str(DocState.PENDING): 0, str(DocState.INDEXED): 0}
    counts.update({str(state): int(n) for state, n in rows})
    return counts


def delete_collection(session: Session, name: str) -> Collection:
    """Delete a collection row (documents, segments and jobs cascade). Files are the caller's."""
    coll = get_collection(session, name)
    session.delete(coll)
    session.flush()
    return coll
