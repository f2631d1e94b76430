"""Exact (flat) search on a CUDA GPU with torch, for FAISS builds without GPU support.

The PyPI ``faiss-cpu`` wheel has no GPU code, and ``faiss-gpu`` wheels pin a CUDA major
version; torch is already on every GPU machine Quarry runs on. A flat segment is moved to the
GPU as one half-precision matrix and searched with a matmul and ``topk``; tombstones and
metadata allow-lists become a boolean mask over the segment's rows.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchFlatIndex:
    """A flat inner-product or L2 index held on one CUDA device.

    ``search`` follows FAISS's conventions: it returns ``(distances, labels)`` where the
    distances are inner products (``ip``) or squared L2 distances (``l2``), and ``-1`` labels
    for empty slots.
    """

    def __init__(
        self, vectors: np.ndarray, ids: np.ndarray, *, metric: str, device: str = "cuda"
    ) -> None:
        import torch

        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        self.metric = metric
        self.device = torch.device(device)
        # Half precision on the GPU (tensor cores); fp32 elsewhere (tests on the CPU).
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.vectors = torch.as_tensor(vectors, device=self.device).to(self.dtype).contiguous()
        self.ids = torch.as_tensor(np.ascontiguousarray(ids, dtype=np.int64), device=self.device)
        self.ids_np = np.ascontiguousarray(ids, dtype=np.int64)
        # ||x||^2 in fp32 for the L2 expansion ||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2
        self.sq_norms = (self.vectors.float() ** 2).sum(dim=1) if metric == "l2" else None

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])

    @classmethod
    def from_faiss(cls, index: faiss.Index, device: str = "cuda") -> TorchFlatIndex | None:
        """Copy an ``IndexIDMap2(IndexFlat)`` to the GPU; ``None`` for any other index type."""
        outer = faiss.downcast_index(index)
        if not isinstance(outer, faiss.IndexIDMap | faiss.IndexIDMap2):
            return None
        inner = faiss.downcast_index(outer.index)
        if not isinstance(inner, faiss.IndexFlat):
            return None
        metric = "ip" if inner.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        vectors = (
            inner.reconstruct_n(0, inner.ntotal)
            if inner.ntotal
            else np.zeros((0, inner.d), dtype=np.float32)
        )
        ids = faiss.vector_to_array(outer.id_map).astype(np.int64)
        return cls(vectors, ids, metric=metric, device=device)

    def _mask(self, exclude: np.ndarray | None, allow: np.ndarray | None) -> Any:
        import torch

        mask = torch.ones(self.ntotal, dtype=torch.bool, device=self.device)
        if allow is not None:
            mask &= torch.isin(self.ids, torch.as_tensor(allow, device=self.device))
        if exclude is not None:
            mask &= ~torch.isin(self.ids, torch.as_tensor(exclude, device=self.device))
        return mask

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        nq = queries.shape[0]
        k = min(k, self.ntotal)
        if nq == 0 or k == 0:
            return np.zeros((nq, k), np.float32), np.full((nq, k), -1, np.int64)
        with torch.inference_mode():
            q = torch.as_tensor(queries, device=self.device).to(self.dtype)
            # Stay in half precision for inner products: upcasting the (nq, n) score matrix
            # would cost more memory traffic than the matmul itself.
            scores = q @ self.vectors.T
            if self.metric == "l2":
                scores = scores.float()
                assert self.sq_norms is not None
                # Larger is better for topk: negate the squared distance.
                scores = 2 * scores - self.sq_norms[None, :] - (q.float() ** 2).sum(1, keepdim=True)
            filtered = exclude is not None or allow is not None
            if filtered:
                scores.masked_fill_(~self._mask(exclude, allow)[None, :], float("-inf"))
            top_scores, top_rows = torch.topk(scores, k, dim=1)
            labels = self.ids[top_rows]
            if filtered:
                labels = torch.where(torch.isinf(top_scores), torch.full_like(labels, -1), labels)
        dist = top_scores.float().cpu().numpy()
        if self.metric == "l2":
            dist = -dist
        return dist, labels.cpu().numpy()
