"""Immutable on-disk segments: one FAISS index plus its ids and raw vectors, and BM25 counts.

Layout: ``<root>/<collection_id>/<segment_name>/`` with ``index.faiss``, ``ids.npy``
(int64), ``vectors.npy`` (float32, un-normalised, so compaction can rebuild any index type)
and ``meta.json``; segments written with texts also hold a lexical index (``lexical.npz``,
``lexical_vocab.json``, see :mod:`indexer.lexical`) and ``"lexical": true`` in their meta.
A segment is written into ``.<name>.tmp-<uuid>`` next to its final place,
fsync'ed, then renamed; the manifest row in the database is the commit point.

Every file is hashed as it is written (:mod:`indexer.integrity`); the checksums are left in
``checksums.json`` (:func:`segment_checksums`) for the caller to store on the manifest row,
and readers given them verify each file before reading it. Unreadable, truncated,
inconsistent or mismatching files raise :class:`SegmentCorrupt` naming the collection and
the segment in its ``details``; :func:`verify_segment` lists every problem instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.collections import METRICS, Metric, check_metric
from core.errors import InvalidRequest, QuarryError, SegmentCorrupt
from indexer.gpu import maybe_to_gpu
from indexer.integrity import (
    CHECKSUMS_FILE,
    HashingWriter,
    checksum_problems,
    file_checksum,
    read_checksums_file,
    write_checksums_file,
    write_hashed,
)
from indexer.lexical import (
    LEXICAL_FILE,
    LEXICAL_VOCAB_FILE,
    LexicalIndex,
    build_lexical,
    load_lexical,
)
from indexer.spec import as_ids, as_vectors, build_index

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.json"
LEXICAL_FILES = (LEXICAL_FILE, LEXICAL_VOCAB_FILE)
# Every file a segment directory may hold; anything else marks a directory as not ours.
SEGMENT_FILES = frozenset(
    {INDEX_FILE, IDS_FILE, VECTORS_FILE, META_FILE, CHECKSUMS_FILE, *LEXICAL_FILES}
)

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TMP_MARKER = ".tmp-"
_COLLECTION_NAME = re.compile(r"0|[1-9][0-9]{0,18}")


def new_segment_name() -> str:
    """A unique, time-sortable segment name: 12 hex digits of ms since epoch + 20 random."""
    return f"{time.time_ns() // 1_000_000:012x}{uuid.uuid4().hex[:20]}"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"Invalid segment name {name!r}: use 1-64 letters, digits, '_' or '-' "
            "(see new_segment_name())"
        )


def collection_dir(root: Path, collection_id: int) -> Path:
    """The directory holding a collection's segments."""
    if not isinstance(collection_id, int) or isinstance(collection_id, bool) or collection_id < 0:
        raise InvalidRequest(f"collection_id must be a non-negative integer, got {collection_id!r}")
    return Path(root) / str(collection_id)


# --- corruption reporting -------------------------------------------------------------


def _segment_ref(path: Path) -> dict[str, Any]:
    """``details`` naming the segment at ``path``: its collection id (if known) and name."""
    parent = path.parent.name
    cid = int(parent) if _COLLECTION_NAME.fullmatch(parent) else None
    return {"collection_id": cid, "segment": path.name}


def _corrupt(path: Path, message: str, problems: Sequence[str] | None = None) -> SegmentCorrupt:
    details = _segment_ref(path)
    if problems:
        details["problems"] = list(problems)
    return SegmentCorrupt(message, details=details)


_LOGGED_MAX = 1024
_logged: OrderedDict[tuple[Any, ...], None] = OrderedDict()
_logged_lock = threading.Lock()


def _log_corruption(exc: SegmentCorrupt) -> None:
    """Log a corruption at ERROR the first time it is seen, at DEBUG when it recurs."""
    cid, name = exc.details.get("collection_id"), exc.details.get("segment")
    key = (cid, name, exc.message)
    with _logged_lock:
        first = key not in _logged
        _logged[key] = None
        _logged.move_to_end(key)
        while len(_logged) > _LOGGED_MAX:
            _logged.popitem(last=False)
    logger.log(
        logging.ERROR if first else logging.DEBUG,
        "Segment %s of collection %s is corrupt: %s",
        name,
        cid,
        exc.message,
    )


@contextlib.contextmanager
def _reported(path: Path) -> Iterator[None]:
    """Name the segment in a :class:`SegmentCorrupt` raised inside, and log it once."""
    try:
        yield
    except SegmentCorrupt as exc:
        for key, value in _segment_ref(path).items():
            exc.details.setdefault(key, value)
        _log_corruption(exc)
        raise


# --- writing --------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy``, fsync'ed; return its checksum."""
    return write_hashed(path, lambda w: np.save(w, array, allow_pickle=False))


def _write_index(path: Path, index: faiss.Index) -> str:
    """Write ``index`` through a hashing callback, fsync'ed; return its checksum."""

    def write(w: HashingWriter) -> None:
        # Streams the serialised index to w.write in chunks: hashed without a re-read.
        faiss.write_index(index, faiss.PyCallbackIOWriter(w.write))  # type: ignore[attr-defined]

    return write_hashed(path, write)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def write_segment(
    root: Path,
    collection_id: int,
    name: str,
    *,
    spec: str,
    metric: Metric,
    vectors: np.ndarray,
    ids: np.ndarray,
    index: faiss.Index | None = None,
    texts: Sequence[str] | None = None,
    lexical: LexicalIndex | None = None,
) -> Path:
    """Write a segment atomically and return its final directory.

    Builds the index with :func:`build_index` unless ``index`` (built from the same vectors
    and ids) is given. With ``texts`` (``texts[i]`` is the document of ``ids[i]``) the
    segment also gets a BM25 lexical index; compaction passes a merged ``lexical`` instead,
    whose ids must be the segment's ids or a subset of them (documents of older segments
    without one). Both indexes are renamed into place together. Each file is hashed while
    it is written; :func:`segment_checksums` returns the checksums to store on the manifest
    row. Raises :class:`QuarryError` if the segment already exists: names are unique, so a
    collision is a bug, not a retry.
    """
    _check_name(name)
    metric = check_metric(metric)
    parent = collection_dir(root, collection_id)
    final = parent / name
    if final.exists():
        raise QuarryError(
            f"Segment {name!r} of collection {collection_id} already exists",
            details={"collection_id": collection_id, "segment": name},
        )
    vectors = as_vectors(vectors)
    ids = as_ids(ids, vectors.shape[0])
    if index is None:
        index = build_index(spec, vectors.shape[1], metric, vectors, ids)
    elif index.ntotal != len(ids) or index.d != vectors.shape[1]:
        raise InvalidRequest(
            f"The index holds {index.ntotal} vectors of dim {index.d} but vectors of shape "
            f"{vectors.shape} were given"
        )
    lexical = _lexical_for(ids, texts, lexical)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "metric": metric,
        "dim": int(index.d),
        "n": int(index.ntotal),
        "created_at": datetime.now(UTC).isoformat(),
    }
    if lexical is not None:
        meta["lexical"] = True
    meta_bytes = json.dumps(meta, indent=2).encode()

    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{name}{_TMP_MARKER}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        checksums = {
            INDEX_FILE: _write_index(tmp / INDEX_FILE, index),
            IDS_FILE: _write_npy(tmp / IDS_FILE, ids),
            VECTORS_FILE: _write_npy(tmp / VECTORS_FILE, vectors),
        }
        if lexical is not None:
            checksums.update(lexical.save(tmp))
        checksums[META_FILE] = write_hashed(tmp / META_FILE, lambda w: w.write(meta_bytes))
        write_checksums_file(tmp, checksums)
        _fsync_path(tmp)
        os.rename(tmp, final)
    except Exception:
        _remove_tree(tmp)
        raise
    _fsync_path(parent)
    logger.info(
        "Wrote segment %s of collection %d (%s, %d vectors%s)",
        name,
        collection_id,
        spec,
        meta["n"],
        "" if lexical is None else f", lexical {len(lexical)} docs / {len(lexical.vocab)} terms",
    )
    return final


def segment_checksums(path: Path) -> dict[str, str]:
    """The checksums of the segment at ``path``: ``{file name: "sha256:<hex>"}``.

    Store them on the segment's manifest row (``commit_segment(..., checksums=...)``). They
    come from the ``checksums.json`` the writer left, so nothing large is re-read. A segment
    written before checksums existed has none: its files are hashed as they are now (a
    back-fill that vouches for nothing that happened to them before). Raises
    :class:`SegmentCorrupt` if the sidecar is unreadable or the directory is missing.
    """
    path = Path(path)
    with _reported(path):
        if not path.is_dir():
            raise _corrupt(path, f"Segment {path.name!r} does not exist")
        try:
            stored = read_checksums_file(path)
        except ValueError as exc:
            raise _corrupt(path, f"Segment {path.name!r}: {exc}") from exc
        if stored is not None:
            return stored
        try:
            return {
                entry.name: file_checksum(entry)
                for entry in sorted(path.iterdir())
                if entry.name in SEGMENT_FILES and entry.name != CHECKSUMS_FILE
            }
        except OSError as exc:
            raise _corrupt(path, f"Segment {path.name!r} has unreadable files") from exc


def _lexical_for(
    ids: np.ndarray, texts: Sequence[str] | None, lexical: LexicalIndex | None
) -> LexicalIndex | None:
    """The lexical index to write with a segment of ``ids``, checked against them."""
    if texts is not None and lexical is not None:
        raise InvalidRequest("Pass texts or a prebuilt lexical index, not both")
    if texts is not None:
        if isinstance(texts, str) or len(texts) != len(ids):
            raise InvalidRequest(
                f"texts must be a sequence of {len(ids)} strings, one per vector id"
            )
        return build_lexical(texts, ids)
    if lexical is not None and not np.isin(lexical.ids, ids).all():
        raise InvalidRequest("The lexical index holds ids that are not in the segment")
    return lexical


def _check_meta(path: Path, meta: Any) -> dict[str, Any]:
    name = path.name
    if not isinstance(meta, dict):
        raise _corrupt(path, f"Segment {name!r} has an unreadable {META_FILE} (not an object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _corrupt(
            path,
            f"Segment {name!r} has format version {meta.get('format_version')!r}; "
            f"this Quarry reads version {FORMAT_VERSION}",
        )
    dim, n = meta.get("dim"), meta.get("n")
    if (
        not isinstance(meta.get("spec"), str)
        or meta.get("metric") not in METRICS
        or not isinstance(dim, int)
        or isinstance(dim, bool)
        or dim < 1
        or not isinstance(n, int)
        or isinstance(n, bool)
        or n < 0
        or not isinstance(meta.get("lexical", False), bool)
    ):
        raise _corrupt(path, f"Segment {name!r} has an invalid {META_FILE}")
    return meta


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        with open(path / META_FILE, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise _corrupt(path, f"Segment {path.name!r} has no readable {META_FILE}") from exc
    return _check_meta(path, meta)


def read_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of the segment at ``path``; :class:`SegmentCorrupt` if unreadable."""
    path = Path(path)
    with _reported(path):
        return _read_meta(path)


def _expected_files(meta: Mapping[str, Any]) -> list[str]:
    files = [INDEX_FILE, IDS_FILE, VECTORS_FILE, META_FILE]
    return files + list(LEXICAL_FILES) if meta.get("lexical") else files


def _verify(
    path: Path, checksums: Mapping[str, str] | None, only: Iterable[str] | None = None
) -> None:
    """Raise :class:`SegmentCorrupt` unless the files (or ``only`` those) match ``checksums``.

    ``checksums=None`` (a segment written before checksums existed) verifies nothing.
    """
    if checksums is None:
        return
    if only is not None:  # unlisted files are caught by _check_coverage once meta is read
        only = [f for f in only if f in checksums]
    problems = checksum_problems(path, checksums, only)
    if problems:
        raise _corrupt(
            path, f"Segment {path.name!r} failed verification: {'; '.join(problems)}", problems
        )


def _check_coverage(path: Path, meta: Mapping[str, Any], checksums: Mapping[str, str]) -> None:
    """Every file the segment should hold must have a checksum (a partial list hides damage)."""
    unlisted = [f for f in _expected_files(meta) if f not in checksums]
    if unlisted:
        raise _corrupt(
            path, f"Segment {path.name!r} has no checksum for {', '.join(unlisted)}", unlisted
        )


@dataclass(eq=False)  # identity semantics: fields are FAISS indexes and numpy arrays
class LoadedSegment:
    """A segment loaded for search. ``ids`` are the vector ids held by ``index``."""

    name: str
    index: faiss.Index
    ids: np.ndarray
    metric: Metric
    dim: int
    lexical: LexicalIndex | None = None  # None: the segment was written without texts

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


# faiss raises RuntimeError for what it detects; garbage sizes can also surface as these.
_READ_ERRORS = (RuntimeError, MemoryError, OSError, ValueError, EOFError)


def _read_index(path: Path) -> faiss.Index:
    file = path / INDEX_FILE
    if not file.is_file():
        raise _corrupt(path, f"Segment {path.name!r} has no {INDEX_FILE}")
    try:
        # Memory-maps what FAISS can (shared page cache across API processes).
        return faiss.read_index(str(file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except _READ_ERRORS:
        logger.debug("Memory-mapped read of %s failed; reading it into memory", file)
    try:
        return faiss.read_index(str(file))
    except _READ_ERRORS as exc:
        raise _corrupt(
            path, f"Segment {path.name!r} has an unreadable or truncated {INDEX_FILE}"
        ) from exc


def _load_npy(path: Path, file: str, *, mmap: bool = False) -> np.ndarray:
    try:
        array: np.ndarray = np.load(
            path / file, mmap_mode="r" if mmap else None, allow_pickle=False
        )
    except FileNotFoundError as exc:
        raise _corrupt(path, f"Segment {path.name!r} has no {file}") from exc
    except (OSError, ValueError, EOFError, MemoryError) as exc:
        raise _corrupt(
            path, f"Segment {path.name!r} has an unreadable or truncated {file}"
        ) from exc
    return array


def _load_ids(path: Path) -> np.ndarray:
    ids = _load_npy(path, IDS_FILE)
    if ids.ndim != 1 or ids.dtype != np.int64:
        raise _corrupt(
            path, f"Segment {path.name!r} has an invalid {IDS_FILE} ({ids.dtype} {ids.shape})"
        )
    return ids


def _check_counts(path: Path, meta: Mapping[str, Any], index: faiss.Index, ids: np.ndarray) -> None:
    if index.ntotal != ids.shape[0] or index.ntotal != meta["n"] or index.d != meta["dim"]:
        raise _corrupt(
            path,
            f"Segment {path.name!r} is inconsistent: index has {index.ntotal} vectors of dim "
            f"{index.d}, ids.npy {ids.shape[0]}, meta.json n={meta['n']} dim={meta['dim']}",
        )


def _load(path: Path, use_gpu: bool, checksums: Mapping[str, str] | None) -> LoadedSegment:
    if not path.is_dir():
        raise _corrupt(path, f"Segment {path.name!r} does not exist")
    _verify(path, checksums)
    meta = _read_meta(path)
    if checksums is not None:
        _check_coverage(path, meta, checksums)
    index = _read_index(path)
    ids = _load_ids(path)
    _check_counts(path, meta, index, ids)
    lexical = _read_lexical(path, meta, ids)
    return LoadedSegment(
        name=path.name,
        index=maybe_to_gpu(index, use_gpu),
        ids=ids,
        metric=check_metric(meta["metric"]),
        dim=int(meta["dim"]),
        lexical=lexical,
    )


def load_segment(
    path: Path, *, use_gpu: bool = False, checksums: Mapping[str, str] | None = None
) -> LoadedSegment:
    """Load the segment at ``path`` read-only, on the GPU(s) when ``use_gpu`` and possible.

    With ``checksums`` (its manifest row's) every file is verified before anything is read;
    ``None`` (a segment written before checksums existed) skips that. The lexical index, if
    the segment has one, is loaded too (into memory, on the CPU). Raises
    :class:`SegmentCorrupt` (logged once at ERROR) if a file is missing, unreadable,
    truncated, fails its checksum or disagrees with the others.
    """
    path = Path(path)
    with _reported(path):
        return _load(path, use_gpu, checksums)


def _read_lexical(
    path: Path, meta: Mapping[str, Any], ids: np.ndarray | None
) -> LexicalIndex | None:
    try:
        lexical = load_lexical(path)
    except SegmentCorrupt as exc:
        raise _corrupt(path, exc.message) from exc
    if bool(meta.get("lexical")) != (lexical is not None):
        raise _corrupt(
            path,
            f"Segment {path.name!r} is inconsistent: meta.json says lexical="
            f"{bool(meta.get('lexical'))} but the lexical files are "
            f"{'present' if lexical is not None else 'missing'}",
        )
    if lexical is not None and ids is not None and not np.isin(lexical.ids, ids).all():
        raise _corrupt(path, f"Segment {path.name!r} has lexical ids that are not in ids.npy")
    return lexical


def read_lexical(path: Path, *, checksums: Mapping[str, str] | None = None) -> LexicalIndex | None:
    """The lexical index of the segment at ``path``; ``None`` if it was written without one.

    With ``checksums`` the files read are verified first (see :func:`load_segment`).
    """
    path = Path(path)
    with _reported(path):
        _verify(path, checksums, [META_FILE, IDS_FILE, *LEXICAL_FILES])
        meta = _read_meta(path)
        if checksums is not None:
            _check_coverage(path, meta, checksums)
        return _read_lexical(path, meta, _load_ids(path))


def read_vectors(
    path: Path, *, checksums: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(ids (n,) int64, vectors (n, dim) float32)`` stored in the segment at ``path``.

    With ``checksums`` the files read are verified first (see :func:`load_segment`).
    """
    path = Path(path)
    with _reported(path):
        _verify(path, checksums, [META_FILE, IDS_FILE, VECTORS_FILE])
        meta = _read_meta(path)
        if checksums is not None:
            _check_coverage(path, meta, checksums)
        ids = _load_ids(path)
        vectors = _load_npy(path, VECTORS_FILE)
        if ids.shape != (meta["n"],) or vectors.shape != (meta["n"], meta["dim"]):
            raise _corrupt(
                path,
                f"Segment {path.name!r} is inconsistent: ids {ids.shape}, vectors "
                f"{vectors.shape}, meta.json n={meta['n']} dim={meta['dim']}",
            )
        if not np.issubdtype(vectors.dtype, np.floating):
            raise _corrupt(path, f"Segment {path.name!r} has {vectors.dtype} vectors")
        return ids, vectors.astype(np.float32, copy=False)


# --- verification ---------------------------------------------------------------------


def _problem(call: Any, problems: list[str]) -> Any:
    """``call()``, or ``None`` after recording the :class:`SegmentCorrupt` it raised."""
    try:
        return call()
    except SegmentCorrupt as exc:
        problems.append(exc.message)
        return None


def _index_ids(index: faiss.Index) -> np.ndarray | None:
    """The ids an ``IndexIDMap``/``IndexIDMap2`` stores, if ``index`` is one."""
    sub = faiss.downcast_index(index)
    id_map = getattr(sub, "id_map", None)
    return None if id_map is None else faiss.vector_to_array(id_map).astype(np.int64)


def verify_segment(path: Path, checksums: Mapping[str, str] | None) -> list[str]:
    """Every problem of the segment at ``path``, human-readable; empty if it is healthy.

    With ``checksums`` (its manifest row's) each file is hashed and compared (a missing file
    or a mismatch is a problem); ``None`` (a segment written before checksums existed) skips
    that. Then, whatever the checksums said, each file is read as :func:`load_segment`
    would: an unreadable or truncated ``index.faiss``, ``ids.npy`` or ``vectors.npy``,
    counts that disagree (ids vs the index's ntotal vs meta.json), index ids that differ
    from ``ids.npy`` and lexical index problems are all reported. Logs nothing at ERROR:
    the caller reports.
    """
    path = Path(path)
    name = path.name
    if not path.is_dir():
        return [f"Segment {name!r} does not exist (no directory)"]
    problems: list[str] = []
    if checksums is not None:
        problems += checksum_problems(path, checksums)
    meta = _problem(lambda: _read_meta(path), problems)
    if meta is not None and checksums is not None:
        _problem(lambda: _check_coverage(path, meta, checksums), problems)
    index = _problem(lambda: _read_index(path), problems)
    ids = _problem(lambda: _load_ids(path), problems)
    vectors = _problem(lambda: _load_npy(path, VECTORS_FILE, mmap=True), problems)
    if index is not None and ids is not None and index.ntotal != ids.shape[0]:
        problems.append(
            f"Segment {name!r}: {IDS_FILE} holds {ids.shape[0]} ids but {INDEX_FILE} "
            f"holds {index.ntotal} vectors"
        )
    elif index is not None and ids is not None:
        index_ids = _problem(lambda: _index_ids(index), problems)
        if index_ids is not None and not np.array_equal(index_ids, ids):
            problems.append(f"Segment {name!r}: {INDEX_FILE} and {IDS_FILE} disagree on the ids")
    if meta is not None:
        n, dim = meta["n"], meta["dim"]
        if index is not None and (index.ntotal != n or index.d != dim):
            problems.append(
                f"Segment {name!r}: {INDEX_FILE} holds {index.ntotal} vectors of dim "
                f"{index.d} but {META_FILE} says n={n} dim={dim}"
            )
        if ids is not None and ids.shape[0] != n:
            problems.append(
                f"Segment {name!r}: {IDS_FILE} holds {ids.shape[0]} ids but {META_FILE} says n={n}"
            )
        if vectors is not None and vectors.shape != (n, dim):
            problems.append(
                f"Segment {name!r}: {VECTORS_FILE} has shape {vectors.shape} but {META_FILE} "
                f"says n={n} dim={dim}"
            )
        _problem(lambda: _read_lexical(path, meta, ids), problems)
    else:
        _problem(lambda: load_lexical(path), problems)
    return problems


# --- layout: deletion and garbage collection -------------------------------------------


def _is_tmp_name(name: str) -> bool:
    return name.startswith(".") and _TMP_MARKER in name


def _looks_like_segment(path: Path) -> bool:
    """A (temporary) segment directory: ours to delete, even if half deleted already.

    A segment directory holds nothing but segment files; a deletion that crashed half way
    may have left any subset of them (meta.json included, or none: an empty directory
    holds no data to lose).
    """
    if path.is_symlink() or not path.is_dir():
        return False
    if _is_tmp_name(path.name):
        return True
    if not _NAME.fullmatch(path.name):
        return False
    return all(
        e.name in SEGMENT_FILES and not e.is_symlink() and e.is_file() for e in path.iterdir()
    )


def delete_segment_files(path: Path) -> None:
    """Delete a segment (or temporary segment) directory; a missing one is not an error.

    Refuses (:class:`QuarryError`) directories that do not look like segments, so a wrong
    path cannot wipe data.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not _looks_like_segment(path):
        raise QuarryError(f"Refusing to delete {path.name!r}: it is not a segment directory")
    with contextlib.suppress(FileNotFoundError):  # deleted concurrently
        shutil.rmtree(path)
    logger.info("Deleted segment directory %s", path)


def orphan_segment_dirs(
    root: Path, collection_id: int, live_names: set[str], *, min_age_s: float = 0.0
) -> list[Path]:
    """Segment and temporary directories of a collection that are not in ``live_names``.

    A crash between writing a segment and committing it to the manifest leaves one. A
    cleaner that runs while workers write segments must pass a ``min_age_s`` grace period
    longer than a write-and-commit takes, or it may delete a segment about to be committed;
    likewise ``live_names`` should keep recently retired segments that readers may still load.
    """
    parent = collection_dir(root, collection_id)
    if not parent.is_dir():
        return []
    now = time.time()
    orphans = []
    for entry in sorted(parent.iterdir()):
        if entry.name in live_names or not (
            _is_tmp_name(entry.name) or _NAME.fullmatch(entry.name)
        ):
            continue
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            if now - entry.stat().st_mtime >= min_age_s:
                orphans.append(entry)
        except FileNotFoundError:  # deleted concurrently
            continue
    return orphans


def collect_garbage(
    root: Path, collection_id: int, keep: set[str], *, min_age_s: float
) -> list[Path]:
    """Delete a collection's directories not in ``keep`` older than ``min_age_s``; list them.

    Removes temporary directories of crashed writes, segments written but never committed
    and retired segments. ``keep`` holds the active segments' names and those retired less
    than :data:`~indexer.policy.RETIRED_GRACE_S` ago (readers may still load them);
    ``min_age_s`` (at least a write-and-commit, e.g. ``RETIRED_GRACE_S``) spares a segment
    an ingest has written but not yet committed. A directory that cannot be removed is
    logged and skipped, so one bad entry does not stop the sweep.
    """
    removed = []
    for path in orphan_segment_dirs(root, collection_id, keep, min_age_s=min_age_s):
        try:
            delete_segment_files(path)
        except (QuarryError, OSError) as exc:
            logger.warning("Collection %d: cannot remove %s: %s", collection_id, path, exc)
            continue
        removed.append(path)
    if removed:
        logger.info(
            "Collection %d: removed %d unreferenced segment directories",
            collection_id,
            len(removed),
        )
    return removed


def stray_collection_dirs(root: Path, live_ids: set[int], *, min_age_s: float = 0.0) -> list[Path]:
    """Directories of collections that no longer exist (ids not in ``live_ids``), sorted.

    Remove each with ``drop_collection(root, int(path.name))``. Read ``live_ids`` from the
    database *before* calling this, and pass a ``min_age_s`` grace period when collections
    may be created meanwhile (a new collection's directory is younger than it).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time()
    stray = []
    for entry in root.iterdir():
        if not _COLLECTION_NAME.fullmatch(entry.name) or int(entry.name) in live_ids:
            continue
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            if now - entry.stat().st_mtime >= min_age_s:
                stray.append(entry)
        except FileNotFoundError:
            continue
    return sorted(stray, key=lambda p: int(p.name))


def drop_collection(root: Path, collection_id: int) -> None:
    """Delete the directory of a collection's segments; a missing one is not an error.

    Deletes only ``collection_dir(root, collection_id)``, and only if it is a real
    directory (not a symlink) directly under ``root`` holding nothing but segment and
    temporary segment directories; anything else is refused with :class:`QuarryError`
    before anything is deleted. Stop the collection's jobs first: a segment written
    meanwhile may recreate the directory (:func:`stray_collection_dirs` finds it).
    """
    path = collection_dir(root, collection_id)
    details = {"collection_id": collection_id}
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise QuarryError(
            f"Refusing to drop collection {collection_id}: its segment path is not a directory "
            "(a symlink or a file)",
            details=details,
        )
    if path.resolve().parent != Path(root).resolve():
        raise QuarryError(
            f"Refusing to drop collection {collection_id}: its directory is outside the "
            "segments root",
            details=details,
        )
    foreign = sorted(e.name for e in path.iterdir() if not _looks_like_segment(e))
    if foreign:
        raise QuarryError(
            f"Refusing to drop collection {collection_id}: its directory holds "
            f"{len(foreign)} entries that are not segments (first: {foreign[:5]})",
            details={**details, "foreign": foreign[:20]},
        )
    with contextlib.suppress(FileNotFoundError):  # dropped concurrently
        shutil.rmtree(path)
    logger.info("Dropped the segment directory of collection %d", collection_id)
