"""Compaction: merge segments' raw vectors and lexical indexes, dropping tombstones."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.errors import InvalidRequest, SegmentCorrupt
from indexer.lexical import LexicalIndex, merge_lexical
from indexer.segment import read_lexical, read_vectors

logger = logging.getLogger(__name__)

# Per segment path, its manifest checksums (None: a segment written before checksums).
SegmentChecksums = Sequence[Mapping[str, str] | None] | None


def _check_drop(drop_ids: np.ndarray) -> np.ndarray:
    drop = np.asarray(drop_ids)
    if drop.ndim != 1 or not (drop.size == 0 or np.issubdtype(drop.dtype, np.integer)):
        raise InvalidRequest(f"drop_ids must be a 1-D array of ids, got shape {drop.shape}")
    return drop.astype(np.int64, copy=False)


def _checksums_for(
    segment_paths: Sequence[Path], checksums: SegmentChecksums
) -> list[Mapping[str, str] | None]:
    if checksums is None:
        return [None] * len(segment_paths)
    if len(checksums) != len(segment_paths):
        raise InvalidRequest(
            f"checksums has {len(checksums)} entries for {len(segment_paths)} segments"
        )
    return list(checksums)


def _corrupt(segment_paths: Sequence[Path], message: str) -> SegmentCorrupt:
    """A fault across segments (duplicate ids, mixed dims), logged at ERROR once here."""
    first = Path(segment_paths[0])
    names = [Path(p).name for p in segment_paths]
    parent = first.parent.name
    exc = SegmentCorrupt(
        message,
        details={
            "collection_id": int(parent) if parent.isdigit() else None,
            "segment": None,  # the fault is between segments, named here:
            "segments": names,
        },
    )
    logger.error("Collection %s: %s (segments %s)", parent, message, ", ".join(names[:10]))
    return exc


def compact_vectors(
    segment_paths: Sequence[Path],
    drop_ids: np.ndarray,
    *,
    checksums: SegmentChecksums = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the segments' ``(ids, vectors)`` in order, leaving out ``drop_ids``.

    The result feeds :func:`~indexer.segment.write_segment` and
    :func:`~indexer.manifest.replace_segments` (``kept_doc_ids`` = the returned ids).
    ``checksums[i]`` (the manifest row's, or ``None``) verifies segment ``i``'s files
    before they are read, so damage is not baked into the compacted segment. Raises
    :class:`SegmentCorrupt` if a segment is damaged, the segments differ in dim or share
    an id.
    """
    if not segment_paths:
        raise InvalidRequest("compact_vectors needs at least one segment")
    drop = _check_drop(drop_ids)
    sums = _checksums_for(segment_paths, checksums)
    all_ids: list[np.ndarray] = []
    all_vectors: list[np.ndarray] = []
    for path, sum_ in zip(segment_paths, sums, strict=True):
        ids, vectors = read_vectors(path, checksums=sum_)
        if all_vectors and vectors.shape[1] != all_vectors[0].shape[1]:
            raise _corrupt(
                segment_paths,
                f"Cannot compact segments of different dims: {Path(path).name!r} has dim "
                f"{vectors.shape[1]}, the first segment {all_vectors[0].shape[1]}",
            )
        all_ids.append(ids)
        all_vectors.append(vectors)
    ids = np.concatenate(all_ids)
    vectors = np.concatenate(all_vectors)
    if np.unique(ids).size != ids.size:
        raise _corrupt(
            segment_paths, "Cannot compact: the segments hold the same vector id more than once"
        )
    keep = ~np.isin(ids, drop)
    logger.info(
        "Compacting %d segments: %d vectors kept, %d dropped",
        len(segment_paths),
        int(keep.sum()),
        int((~keep).sum()),
    )
    return ids[keep], np.ascontiguousarray(vectors[keep])


def compact_lexical(
    segment_paths: Sequence[Path],
    drop_ids: np.ndarray,
    *,
    checksums: SegmentChecksums = None,
) -> LexicalIndex | None:
    """Merge the segments' lexical indexes in order, leaving out ``drop_ids``.

    Its ids are those of :func:`compact_vectors` over the same arguments, in the same order
    (or a subsequence of them, see below), so pass both to
    :func:`~indexer.segment.write_segment` (``lexical=``). ``None`` if no segment has a
    lexical index. Segments written before BM25 existed have none: their
    documents stay out of the merged index (a warning says how many), as they were out of
    BM25 search before. ``checksums`` as for :func:`compact_vectors`.
    """
    if not segment_paths:
        raise InvalidRequest("compact_lexical needs at least one segment")
    drop = _check_drop(drop_ids)
    sums = _checksums_for(segment_paths, checksums)
    indexes: list[LexicalIndex] = []
    missing: list[str] = []
    for path, sum_ in zip(segment_paths, sums, strict=True):
        lexical = read_lexical(path, checksums=sum_)
        if lexical is None:
            missing.append(Path(path).name)
        else:
            indexes.append(lexical)
    if not indexes:
        return None
    if missing:
        logger.warning(
            "Compacting lexical indexes: %d of %d segments have none (%s); their documents "
            "stay out of BM25 search until re-indexed",
            len(missing),
            len(segment_paths),
            ", ".join(missing[:5]),
        )
    try:
        return merge_lexical(indexes, drop)
    except SegmentCorrupt as exc:
        raise _corrupt(segment_paths, exc.message) from exc
