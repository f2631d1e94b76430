"""Reading and writing JSON and JSON-lines files, plain or gzipped: the one reader Quarry uses.

Gzip is told by the file's magic bytes (``1f 8b``), not by its name, so ``corpus.jsonl`` that
is really gzipped and ``run.json.gz`` both read. Every problem raises
:class:`core.errors.InvalidRequest` naming the file, and the line for JSON lines.

Used by ``quarry index`` (:mod:`core.ingest_files`), the evaluation loaders
(:mod:`core.datasets`) and the training data of :mod:`embedder.train.data`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from core.errors import InvalidRequest

__all__ = ["GZIP_MAGIC", "is_gzip", "iter_jsonl", "open_text", "read_json", "write_jsonl"]

#: First two bytes of every gzip stream.
GZIP_MAGIC = b"\x1f\x8b"

_UNREADABLE = (OSError, EOFError, UnicodeDecodeError)


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with Path(path).open("rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_text(path: str | Path) -> IO[str]:
    """``path`` opened as UTF-8 text for reading, decompressed if it is gzip (by magic bytes)."""
    path = Path(path)
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise InvalidRequest(f"{what} not found: {path}")


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value stored in ``path`` (gzip too).

    ``what`` names the file in errors: ``read_json(p, "Run")`` raises ``Run file not found: p``.
    """
    path = Path(path)
    _check_file(path, f"{what} file")
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except _UNREADABLE as exc:
        raise InvalidRequest(f"{path}: not a UTF-8 text or gzip file ({exc})") from exc


def iter_jsonl(path: str | Path, *, what: str = "File") -> Iterator[tuple[int, Any]]:
    """``(line number, decoded value)`` of every non-blank line of a JSON-lines file (gzip too).

    Line numbers are 1-based, so callers can name ``f"{path}:{lineno}"`` in their own errors.
    A missing file raises ``InvalidRequest("<what> not found: <path>")``; a line that is not
    JSON raises ``InvalidRequest("<path>:<line>: not valid JSON (...)")``; a binary or
    corrupt file says so. The file is checked when iteration starts.
    """
    path = Path(path)
    _check_file(path, what)
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                yield lineno, value
    except _UNREADABLE as exc:
        raise InvalidRequest(f"{path}: not a UTF-8 text or gzip file ({exc})") from exc


def _open_for_writing(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


def write_jsonl(records: Iterable[Any], path: str | Path) -> Path:
    """Write ``records`` as JSON lines (gzip if ``path`` ends in ``.gz``); returns the path.

    Parent directories are created; non-ASCII text is written as is (UTF-8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_for_writing(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
