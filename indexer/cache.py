"""A per-process cache of loaded segments, refreshed when a manifest version changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidRequest, SegmentCorrupt
from indexer.segment import LoadedSegment, collection_dir, load_segment

logger = logging.getLogger(__name__)

# Segment name -> its manifest checksums; None (or a missing name): a segment written
# before checksums existed, loaded without verification.
ChecksumsByName = Mapping[str, Mapping[str, str] | None]


@dataclass
class _Entry:
    version: int = -1
    segments: dict[str, LoadedSegment] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SegmentCache:
    """Loaded segments per collection, keyed by manifest version. Thread-safe.

    Loading happens under a per-collection lock, so a refresh of one collection does not
    block searches of others, and concurrent requests load a segment once. A collection
    whose segments fail to load (:class:`SegmentCorrupt`) is *degraded* until a later
    :meth:`get` of it succeeds or it is invalidated; :meth:`degraded` lists them for
    health checks.
    """

    def __init__(self, root: Path, use_gpu: bool = False) -> None:
        self._root = Path(root)
        self._use_gpu = use_gpu
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._degraded: dict[int, str] = {}

    def _load(
        self, collection_id: int, name: str, checksums: ChecksumsByName | None
    ) -> LoadedSegment:
        return load_segment(
            collection_dir(self._root, collection_id) / name,
            use_gpu=self._use_gpu,
            checksums=None if checksums is None else checksums.get(name),
        )

    def get(
        self,
        collection_id: int,
        manifest_version: int,
        segment_names: Sequence[str],
        checksums: ChecksumsByName | None = None,
    ) -> list[LoadedSegment]:
        """The loaded segments ``segment_names`` (in that order) of manifest ``manifest_version``.

        Segments already loaded are reused; those no longer listed are dropped from the cache.
        ``checksums`` maps a segment name to its manifest row's checksums, verified when the
        segment is loaded from disk (``None``: a segment without checksums, not verified).
        Raises :class:`SegmentCorrupt` if a segment cannot be loaded, and marks the
        collection degraded.
        """
        names = list(segment_names)
        if len(set(names)) != len(names):
            raise InvalidRequest(f"Duplicate segment names in {names}")
        with self._lock:
            entry = self._entries.setdefault(collection_id, _Entry())
        try:
            with entry.lock:
                segments = self._get(collection_id, entry, manifest_version, names, checksums)
        except SegmentCorrupt as exc:
            with self._lock:
                self._degraded[collection_id] = exc.message
            raise
        with self._lock:
            if self._degraded.pop(collection_id, None) is not None:
                logger.info("Collection %d: segments load again, no longer degraded", collection_id)
        return segments

    def _get(
        self,
        collection_id: int,
        entry: _Entry,
        manifest_version: int,
        names: list[str],
        checksums: ChecksumsByName | None,
    ) -> list[LoadedSegment]:
        if entry.version == manifest_version and list(entry.segments) == names:
            return list(entry.segments.values())
        if manifest_version < entry.version:
            # A caller that read an older manifest: serve it without rolling back the cache.
            return [entry.segments.get(n) or self._load(collection_id, n, checksums) for n in names]
        loaded = {
            n: entry.segments.get(n) or self._load(collection_id, n, checksums) for n in names
        }
        logger.info(
            "Collection %d: manifest version %d -> %d, %d segments (%d newly loaded)",
            collection_id,
            entry.version,
            manifest_version,
            len(loaded),
            sum(n not in entry.segments for n in names),
        )
        entry.segments, entry.version = loaded, manifest_version
        return list(loaded.values())

    def invalidate(self, collection_id: int) -> None:
        """Forget a collection's segments (and its degraded mark); the next :meth:`get` loads
        them again. Call it when a collection is deleted or its segments were repaired."""
        with self._lock:
            self._entries.pop(collection_id, None)
            self._degraded.pop(collection_id, None)

    def degraded(self) -> dict[int, str]:
        """Collections whose segments last failed to load: collection id -> the error message."""
        with self._lock:
            return dict(self._degraded)
