"""Compaction: merge segments' raw vectors, dropping tombstones, for one rebuilt segment."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import IndexError_, InvalidRequest
from indexer.segment import read_vectors

logger = logging.getLogger(__name__)


def compact_vectors(
    segment_paths: Sequence[Path], drop_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the segments' ``(ids, vectors)`` in order, leaving out ``drop_ids``.

    The result feeds :func:`~indexer.segment.write_segment` and
    :func:`~indexer.manifest.replace_segments` (``kept_doc_ids`` = the returned ids).
    Raises :class:`IndexError_` if the segments differ in dim or share an id.
    """
    if not segment_paths:
        raise InvalidRequest("compact_vectors needs at least one segment")
    drop = np.asarray(drop_ids, dtype=np.int64)
    if drop.ndim != 1:
        raise InvalidRequest(f"drop_ids must be a 1-D array of ids, got shape {drop.shape}")
    all_ids: list[np.ndarray] = []
    all_vectors: list[np.ndarray] = []
    for path in segment_paths:
        ids, vectors = read_vectors(path)
        if all_vectors and vectors.shape[1] != all_vectors[0].shape[1]:
            raise IndexError_(
                f"Cannot compact segments of different dims: {Path(path).name!r} has dim "
                f"{vectors.shape[1]}, the first segment {all_vectors[0].shape[1]}"
            )
        all_ids.append(ids)
        all_vectors.append(vectors)
    ids = np.concatenate(all_ids)
    vectors = np.concatenate(all_vectors)
    if np.unique(ids).size != ids.size:
        raise IndexError_("Cannot compact: the segments hold the same vector id more than once")
    keep = ~np.isin(ids, drop)
    logger.info(
        "Compacting %d segments: %d vectors kept, %d dropped",
        len(segment_paths),
        int(keep.sum()),
        int((~keep).sum()),
    )
    return ids[keep], np.ascontiguousarray(vectors[keep])
