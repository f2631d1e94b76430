"""Segments: index specs, atomic on-disk segments, fan-out search, manifest, compaction.

A collection is a list of immutable segments plus tombstones (deleted document ids still
present in some segment). A segment holds a FAISS index and, when written with texts, a
BM25 lexical index over the same ids; :func:`rrf` fuses their rankings. Every segment file
is checksummed when written (:func:`segment_checksums`) and verified when loaded
(:func:`load_segment`, :class:`SegmentCache`, :func:`verify_segment`).
"""

from __future__ import annotations

from indexer.cache import SegmentCache
from indexer.compact import compact_lexical, compact_vectors
from indexer.fusion import rrf
from indexer.gpu import gpu_count, maybe_to_gpu
from indexer.lexical import (
    LexicalIndex,
    build_lexical,
    load_lexical,
    merge_lexical,
    search_lexical,
    tokenize,
)
from indexer.manifest import (
    active_segments,
    commit_segment,
    lock_collection,
    replace_segments,
    retire_segments,
    tombstone_ids,
)
from indexer.policy import (
    FALLBACK_SPEC,
    FRESH_SEGMENT_SPEC,
    RETIRED_GRACE_S,
    compaction_spec,
)
from indexer.search import search_segments
from indexer.segment import (
    LoadedSegment,
    collect_garbage,
    collection_dir,
    delete_segment_files,
    drop_collection,
    load_segment,
    new_segment_name,
    orphan_segment_dirs,
    read_lexical,
    read_meta,
    read_vectors,
    segment_checksums,
    stray_collection_dirs,
    verify_segment,
    write_segment,
)
from indexer.spec import (
    build_index,
    min_training_vectors,
    set_search_params,
    validate_spec,
)

__all__ = [
    "FALLBACK_SPEC",
    "FRESH_SEGMENT_SPEC",
    "RETIRED_GRACE_S",
    "LexicalIndex",
    "LoadedSegment",
    "SegmentCache",
    "active_segments",
    "build_index",
    "build_lexical",
    "collect_garbage",
    "collection_dir",
    "commit_segment",
    "compact_lexical",
    "compact_vectors",
    "compaction_spec",
    "delete_segment_files",
    "drop_collection",
    "gpu_count",
    "load_lexical",
    "load_segment",
    "lock_collection",
    "maybe_to_gpu",
    "merge_lexical",
    "min_training_vectors",
    "new_segment_name",
    "orphan_segment_dirs",
    "read_lexical",
    "read_meta",
    "read_vectors",
    "replace_segments",
    "retire_segments",
    "rrf",
    "search_lexical",
    "search_segments",
    "segment_checksums",
    "set_search_params",
    "stray_collection_dirs",
    "tokenize",
    "tombstone_ids",
    "validate_spec",
    "verify_segment",
    "write_segment",
]
