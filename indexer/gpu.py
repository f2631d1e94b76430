"""Optional GPU placement of FAISS indexes (a no-op on CPU-only FAISS builds)."""

from __future__ import annotations

import logging
from typing import Any

import faiss

from indexer.torch_flat import TorchFlatIndex, torch_cuda_available

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


def maybe_to_gpu(index: faiss.Index, enabled: bool) -> Any:
    """Place ``index`` on the GPU when ``enabled`` and possible, else return it unchanged.

    With a GPU build of FAISS, flat and IVF indexes are replicated on all GPUs. With a
    CPU-only FAISS but CUDA torch, flat segments move to the GPU as a
    :class:`~indexer.torch_flat.TorchFlatIndex`. Failures (unsupported type, out of memory)
    are logged and the CPU index is kept.
    """
    if not enabled:
        return index
    if gpu_count() == 0:
        if torch_cuda_available():
            try:
                placed = TorchFlatIndex.from_faiss(index)
            except (RuntimeError, MemoryError) as exc:
                logger.warning("Keeping index on the CPU: moving it to the GPU failed: %s", exc)
                return index
            if placed is not None:
                return placed
        return index
    if not _gpu_supported(index):
        return index
    try:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = False  # replicate: each GPU answers whole queries
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except (RuntimeError, MemoryError) as exc:
        logger.warning("Keeping index on the CPU: moving it to the GPU failed: %s", exc)
        return index
