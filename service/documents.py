"""Documents: fetch and delete by id (ingest is :mod:`service.ingest`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core import documents as repo
from core.collections import get_collection
from core.db import session_scope
from core.models import Document

if TYPE_CHECKING:
    from service.container import Container


def get_document(c: Container, collection: str, doc_id: str) -> Document:
    with session_scope(c.sessions) as s:
        coll = get_collection(s, collection)
        return repo.get_document(s, coll.id, doc_id)


def delete_document(c: Container, collection: str, doc_id: str) -> None:
    """Delete one document (404 for an unknown id); it disappears from search at once."""
    with session_scope(c.sessions) as s:
        coll = get_collection(s, collection)
        repo.get_document(s, coll.id, doc_id)
        repo.delete_documents(s, coll, [doc_id])


def delete_documents(c: Container, collection: str, doc_ids: Sequence[str]) -> int:
    """Delete many documents; unknown ids are ignored. Returns how many were deleted."""
    with session_scope(c.sessions) as s:
        coll = get_collection(s, collection)
        return repo.delete_documents(s, coll, doc_ids)
