"""Index policy: which index spec a segment is built with, and how long retired ones stay.

Fresh ingest segments are small and searched exactly (``Flat``); compaction merges them
into one segment of the collection's spec, which it trains, unless there are too few
vectors to train it.
"""

from __future__ import annotations

import logging

from indexer.spec import min_training_vectors

logger = logging.getLogger(__name__)

FRESH_SEGMENT_SPEC = "Flat"  # fresh ingest segments are small and exact; compaction trains
FALLBACK_SPEC = "Flat"  # needs no training: what compaction builds when the spec cannot train
RETIRED_GRACE_S = 600  # readers may hold a retired segment's old manifest this long


def compaction_spec(
    spec: str, n_vectors: int, dim: int, *, collection: str | int | None = None
) -> str:
    """The spec to compact ``n_vectors`` vectors of ``dim`` into: ``spec``, or ``"Flat"``.

    Falls back to ``"Flat"`` (with a warning naming ``collection``, if given) when there
    are fewer vectors than ``spec`` needs to train (:func:`~indexer.spec.min_training_vectors`).
    Raises :class:`~core.errors.InvalidIndexSpec` if ``spec`` is not a valid factory string.
    """
    need = min_training_vectors(spec, dim)
    if n_vectors < need:
        logger.warning(
            "Collection %s: %d vectors are too few to train %r (needs %d); building %s",
            "?" if collection is None else collection,
            n_vectors,
            spec,
            need,
            FALLBACK_SPEC,
        )
        return FALLBACK_SPEC
    return spec
