"""Optional GPU placement of FAISS indexes (a no-op on CPU-only FAISS builds)."""

from __future__ import annotations

import logging

import faiss

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    """Number of GPUs FAISS can use; 0 when FAISS was built without GPU support."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError:
        return 0


def _gpu_supported(index: faiss.Index) -> bool:
    # FAISS GPU implements flat and IVF (Flat/SQ/PQ) indexes; the cloner keeps IDMap and
    # PreTransform wrappers on the CPU around the GPU index. HNSW etc. stay on the CPU.
    sub = faiss.downcast_index(index)
    while isinstance(sub, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
        sub = faiss.downcast_index(sub.index)
    return isinstance(sub, faiss.IndexFlat | faiss.IndexIVF)


def maybe_to_gpu(index: faiss.Index, enabled: bool) -> faiss.Index:
    """Replicate ``index`` on all GPUs when ``enabled`` and possible, else return it unchanged.

    Failures (unsupported type, out of memory) are logged and the CPU index is kept.
    """
    if not enabled or gpu_count() == 0 or not _gpu_supported(index):
        return index
    try:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = False  # replicate: each GPU answers whole queries
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except (RuntimeError, MemoryError) as exc:
        logger.warning("Keeping index on the CPU: moving it to the GPU failed: %s", exc)
        return index
