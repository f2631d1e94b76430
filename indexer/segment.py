"""Immutable on-disk segments: one FAISS index plus its ids and raw vectors, and BM25 counts.

Layout: ``<root>/<collection_id>/<segment_name>/`` with ``index.faiss``, ``ids.npy``
(int64), ``vectors.npy`` (float32, un-normalised, so compaction can rebuild any index type)
and ``meta.json``; segments written with texts also hold a lexical index (``lexical.npz``,
``lexical_vocab.json``, see :mod:`indexer.lexical`) and ``"lexical": true`` in their meta.
A segment is written into ``.<name>.tmp-<uuid>`` next to its final place,
fsync'ed, then renamed; the manifest row in the database is the commit point.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from core.errors import IndexError_, InvalidRequest
from indexer.gpu import maybe_to_gpu
from indexer.lexical import LexicalIndex, build_lexical, load_lexical
from indexer.spec import Metric, as_ids, as_vectors, build_index, check_metric

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
META_FILE = "meta.json"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TMP_MARKER = ".tmp-"


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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


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
    without one). Both indexes are renamed into place together. Raises
    :class:`IndexError_` if the segment already exists: names are unique, so a collision is
    a bug, not a retry.
    """
    _check_name(name)
    metric = check_metric(metric)
    parent = collection_dir(root, collection_id)
    final = parent / name
    if final.exists():
        raise IndexError_(f"Segment {name!r} of collection {collection_id} already exists")
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
    meta = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "metric": metric,
        "dim": int(index.d),
        "n": int(index.ntotal),
        "created_at": datetime.now(UTC).isoformat(),
    }
    if lexical is not None:
        meta["lexical"] = True

    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{name}{_TMP_MARKER}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        _fsync_path(tmp / INDEX_FILE)
        _write_npy(tmp / IDS_FILE, ids)
        _write_npy(tmp / VECTORS_FILE, vectors)
        if lexical is not None:
            lexical.save(tmp)
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
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


def read_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of the segment at ``path``; :class:`IndexError_` if unreadable."""
    try:
        with open(Path(path) / META_FILE, encoding="utf-8") as f:
            meta: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as exc:
        raise IndexError_(f"Segment {Path(path).name!r} has no readable {META_FILE}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexError_(
            f"Segment {Path(path).name!r} has format version {meta.get('format_version')!r}; "
            f"this Quarry reads version {FORMAT_VERSION}"
        )
    return meta


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


def _read_index(path: Path) -> faiss.Index:
    try:
        # Memory-maps what FAISS can (shared page cache across API processes).
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        logger.debug("Memory-mapped read of %s failed; reading it into memory", path)
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexError_(f"Cannot read the index of segment {path.parent.name!r}") from exc


def load_segment(path: Path, *, use_gpu: bool = False) -> LoadedSegment:
    """Load the segment at ``path`` read-only, on the GPU(s) when ``use_gpu`` and possible.

    The lexical index, if the segment has one, is loaded too (into memory, on the CPU).
    """
    path = Path(path)
    meta = read_meta(path)
    index = _read_index(path / INDEX_FILE)
    ids = np.load(path / IDS_FILE, allow_pickle=False)
    if index.ntotal != ids.shape[0] or index.ntotal != meta["n"] or index.d != meta["dim"]:
        raise IndexError_(
            f"Segment {path.name!r} is inconsistent: index has {index.ntotal} vectors of dim "
            f"{index.d}, ids.npy {ids.shape[0]}, meta.json n={meta['n']} dim={meta['dim']}"
        )
    lexical = _read_lexical(path, meta, ids)
    return LoadedSegment(
        name=path.name,
        index=maybe_to_gpu(index, use_gpu),
        ids=ids,
        metric=check_metric(meta["metric"]),
        dim=int(meta["dim"]),
        lexical=lexical,
    )


def _read_lexical(path: Path, meta: dict[str, Any], ids: np.ndarray) -> LexicalIndex | None:
    lexical = load_lexical(path)
    if bool(meta.get("lexical")) != (lexical is not None):
        raise IndexError_(
            f"Segment {path.name!r} is inconsistent: meta.json says lexical="
            f"{bool(meta.get('lexical'))} but the lexical files are "
            f"{'present' if lexical is not None else 'missing'}"
        )
    if lexical is not None and not np.isin(lexical.ids, ids).all():
        raise IndexError_(f"Segment {path.name!r} has lexical ids that are not in ids.npy")
    return lexical


def read_lexical(path: Path) -> LexicalIndex | None:
    """The lexical index of the segment at ``path``; ``None`` if it was written without one."""
    path = Path(path)
    meta = read_meta(path)
    return _read_lexical(path, meta, np.load(path / IDS_FILE, allow_pickle=False))


def read_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``(ids (n,) int64, vectors (n, dim) float32)`` stored in the segment at ``path``."""
    path = Path(path)
    meta = read_meta(path)
    ids = np.load(path / IDS_FILE, allow_pickle=False)
    vectors = np.load(path / VECTORS_FILE, allow_pickle=False)
    if ids.shape != (meta["n"],) or vectors.shape != (meta["n"], meta["dim"]):
        raise IndexError_(
            f"Segment {path.name!r} is inconsistent: ids {ids.shape}, vectors {vectors.shape}, "
            f"meta.json n={meta['n']} dim={meta['dim']}"
        )
    return ids.astype(np.int64, copy=False), vectors.astype(np.float32, copy=False)


def _is_tmp_name(name: str) -> bool:
    return name.startswith(".") and _TMP_MARKER in name


def delete_segment_files(path: Path) -> None:
    """Delete a segment (or temporary segment) directory; a missing one is not an error.

    Refuses directories that do not look like segments, so a wrong path cannot wipe data.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir() or not (_is_tmp_name(path.name) or (path / META_FILE).is_file()):
        raise IndexError_(f"Refusing to delete {path.name!r}: it is not a segment directory")
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
        if not entry.is_dir() or entry.name in live_names:
            continue
        if not (_is_tmp_name(entry.name) or _NAME.fullmatch(entry.name)):
            continue
        if now - entry.stat().st_mtime >= min_age_s:
            orphans.append(entry)
    return orphans
