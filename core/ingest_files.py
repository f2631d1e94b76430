"""Reading documents from JSONL files (``quarry index``, ``quarry serve --demo``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from core.documents import DocumentIn
from core.errors import InvalidRequest
from core.jsonl import iter_jsonl

DEMO_CORPUS = Path(__file__).resolve().parent / "demo" / "cranfield.jsonl.gz"
DEMO_COLLECTION = "cranfield"

__all__ = ["DEMO_COLLECTION", "DEMO_CORPUS", "read_jsonl"]


def read_jsonl(path: Path) -> Iterator[DocumentIn]:
    """Yield documents from JSONL lines ``{"id", "text", "metadata"?}`` (plain or gzipped).

    BEIR corpus lines (``{"_id", "title", "text"}``) are accepted too: the title goes
    before the text and into ``metadata.title``. Lines with no text are skipped; errors name
    the file and line (:func:`core.jsonl.iter_jsonl`).
    """
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise InvalidRequest(f'{path}:{lineno}: expected a JSON object {{"id", "text"}}')
        doc_id = rec.get("id", rec.get("_id"))
        text = rec.get("text") or ""
        metadata = dict(rec.get("metadata") or {})
        title = rec.get("title")
        if title and "_id" in rec:
            metadata.setdefault("title", title)
            if not text.startswith(title):
                text = f"{title}\n{text}" if text else title
        if doc_id is None or not str(doc_id).strip():
            raise InvalidRequest(f"{path}:{lineno}: missing 'id'")
        if not text.strip():
            continue  # nothing to embed
        try:
            doc = DocumentIn(id=str(doc_id), text=text, metadata=metadata)
        except ValidationError as exc:  # an id too long, for one
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidRequest(f"{path}:{lineno}: invalid document ({problems})") from exc
        yield doc
