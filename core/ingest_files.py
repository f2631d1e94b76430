"""Reading documents from JSONL files (``quarry index``, ``quarry serve --demo``)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core.documents import DocumentIn
from core.errors import InvalidRequest

DEMO_CORPUS = Path(__file__).resolve().parent / "demo" / "cranfield.jsonl.gz"
DEMO_COLLECTION = "cranfield"


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[DocumentIn]:
    """Yield documents from JSONL lines ``{"id", "text", "metadata"?}``.

    BEIR corpus lines (``{"_id", "title", "text"}``) are accepted too: the title goes
    before the text and into ``metadata.title``.
    """
    if not path.exists():
        raise InvalidRequest(f"File not found: {path}")
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
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
            yield DocumentIn(str(doc_id), text, metadata)
