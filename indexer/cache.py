"""A per-process cache of loaded segments, refreshed when a manifest version changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidRequest
from indexer.segment import LoadedSegment, collection_dir, load_segment

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    version: int = -1
    segments: dict[str, LoadedSegment] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SegmentCache:
    """Loaded segments per collection, keyed by manifest version. Thread-safe.

    Loading happens under a per-collection lock, so a refresh of one collection does not
    block searches of others, and concurrent requests load a segment once.
    """

    def __init__(self, root: Path, use_gpu: bool = False) -> None:
        self._root = Path(root)
        self._use_gpu = use_gpu
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}

    def _load(self, collection_id: int, name: str) -> LoadedSegment:
        return load_segment(collection_dir(self._root, collection_id) / name, use_gpu=self._use_gpu)

    def get(
        self, collection_id: int, manifest_version: int, segment_names: Sequence[str]
    ) -> list[LoadedSegment]:
        """The loaded segments ``segment_names`` (in that order) of manifest ``manifest_version``.

        Segments already loaded are reused; those no longer listed are dropped from the cache.
        """
        names = list(segment_names)
        if len(set(names)) != len(names):
            raise InvalidRequest(f"Duplicate segment names in {names}")
        with self._lock:
            entry = self._entries.setdefault(collection_id, _Entry())
        with entry.lock:
            if entry.version == manifest_version and list(entry.segments) == names:
                return list(entry.segments.values())
            if manifest_version < entry.version:
                # A caller that read an older manifest: serve it without rolling back the cache.
                return [entry.segments.get(n) or self._load(collection_id, n) for n in names]
            loaded = {n: entry.segments.get(n) or self._load(collection_id, n) for n in names}
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
        """Forget a collection's segments; the next :meth:`get` loads them again."""
        with self._lock:
            self._entries.pop(collection_id, None)
