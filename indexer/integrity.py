"""Checksums of segment files: computed while a segment is written, verified before it is read.

A checksum is ``"sha256:<64 hex digits>"``; a segment's checksums map each of its file names
(relative to the segment directory) to one. The writer hashes each file as it streams it to
disk (:class:`HashingWriter`), leaves them in a small sidecar (``checksums.json``, not itself
checksummed) and the caller stores them on the segment's manifest row, the source of truth
that readers verify against (:func:`checksum_problems`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "sha256"

_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CHUNK = 1 << 20


class HashingWriter:
    """A write-only binary file wrapper that hashes every byte it forwards.

    Deliberately has no ``seek``/``tell``/``fileno``: writers that would rewrite earlier
    bytes (zip files) or bypass ``write`` (``ndarray.tofile``) must not use it.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Hash ``data`` and write it to the wrapped file."""
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += view.nbytes
        self._file.write(view)
        return view.nbytes

    def flush(self) -> None:
        """Flush the wrapped file."""
        self._file.flush()

    @property
    def checksum(self) -> str:
        """``"sha256:<hex>"`` of everything written so far."""
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


def write_hashed(path: Path, write: Callable[[HashingWriter], Any]) -> str:
    """Create ``path``, let ``write`` stream its content, fsync it; return its checksum."""
    with open(path, "wb") as f:
        writer = HashingWriter(f)
        write(writer)
        f.flush()
        os.fsync(f.fileno())
    return writer.checksum


def file_checksum(path: Path) -> str:
    """``"sha256:<hex>"`` of the file at ``path``, read in chunks. Raises :class:`OSError`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"{ALGORITHM}:{digest.hexdigest()}"


def checksums_format_problems(checksums: Mapping[str, str]) -> list[str]:
    """What is malformed in a checksum mapping (bad file names or values); empty if fine."""
    problems = []
    if not isinstance(checksums, Mapping) or not checksums:
        return ["the checksum list is empty or not a mapping"]
    for name, value in checksums.items():
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name == CHECKSUMS_FILE:
            problems.append(f"invalid file name {name!r} in the checksum list")
        elif not isinstance(value, str) or not _CHECKSUM.fullmatch(value):
            problems.append(f"{name}: invalid checksum {value!r} (expected 'sha256:<hex>')")
    return problems


def checksum_problems(
    directory: Path, checksums: Mapping[str, str], only: Iterable[str] | None = None
) -> list[str]:
    """Human-readable problems of the files in ``directory`` against ``checksums``.

    Checks every listed file, or those of ``only`` (each of which must be listed): a missing
    or unreadable file, or one whose content (size included) hashes differently, is a problem.
    An empty list means the files are intact.
    """
    problems = checksums_format_problems(checksums)
    if problems:
        return problems
    names = sorted(checksums) if only is None else list(only)
    for name in names:
        expected = checksums.get(name)
        if expected is None:
            problems.append(f"{name}: has no checksum")
            continue
        path = Path(directory) / name
        try:
            actual = file_checksum(path)
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        except OSError as exc:
            problems.append(f"{name}: unreadable ({exc.strerror or type(exc).__name__})")
            continue
        if actual != expected:
            problems.append(
                f"{name}: checksum mismatch ({size} bytes on disk; expected "
                f"{expected[:19]}…, got {actual[:19]}…)"
            )
    return problems


def write_checksums_file(directory: Path, checksums: Mapping[str, str]) -> None:
    """Write the ``checksums.json`` sidecar into ``directory``, fsync'ed."""
    with open(Path(directory) / CHECKSUMS_FILE, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(checksums.items())), f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def read_checksums_file(directory: Path) -> dict[str, str] | None:
    """The ``checksums.json`` sidecar of ``directory``; ``None`` if there is none.

    Raises :class:`ValueError` if it exists but is unreadable or malformed.
    """
    path = Path(directory) / CHECKSUMS_FILE
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{CHECKSUMS_FILE} is unreadable: {type(exc).__name__}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{CHECKSUMS_FILE} is not a JSON object")
    problems = checksums_format_problems(doc)
    if problems:
        raise ValueError(f"{CHECKSUMS_FILE} is malformed: {problems[0]}")
    return {str(k): str(v) for k, v in doc.items()}
