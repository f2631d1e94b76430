"""Serving a :class:`~ranker.text.model.RerankModel`: device, precision and batching.

One loop serves every kind. A call tokenises the query's documents once
(:meth:`~ranker.text.model.RerankModel.prepare`), plans batches by a token budget with
:func:`embedder.batching.plan_batches` (longest first, so each batch holds texts of similar
length and little compute goes to padding), scores each batch under ``torch.inference_mode``
and scatters the scores back to input order; results do not depend on the batching. On CUDA the
model runs in bf16 (fp16 where bf16 is unsupported); the kinds keep their precision-critical
arithmetic (normalisation, similarities, kernels, the yes/no logits) in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from embedder.base import resolve_device
from embedder.batching import plan_batches
from ranker.text.base import check_inputs
from ranker.text.model import RerankModel
from ranker.text.registry import LoadOptions

logger = logging.getLogger(__name__)

#: On the CPU compute follows padded tokens: a batch closes before real tokens fill less
#: than this share of it (see ``plan_batches``). On a GPU an extra pass costs more.
CPU_MIN_FILL = 0.75


def inference_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA where supported, else fp16 there; float32 on the CPU."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class ModelReranker:
    """A :class:`~ranker.text.base.TextReranker` over a :class:`RerankModel`. Thread-safe."""

    def __init__(self, model: RerankModel, name: str, options: LoadOptions | None = None) -> None:
        options = options or LoadOptions()
        self.model = model
        self.name = name
        self.kind = model.kind
        self.device = resolve_device(options.device)
        self.batch_tokens = options.batch_tokens
        self.max_batch_size = options.max_batch_size
        self.min_fill = CPU_MIN_FILL if self.device == "cpu" else 0.0
        model.eval()
        model.to(device=self.device, dtype=inference_dtype(self.device))
        logger.info("reranker %s (%s) on %s", name, self.kind, self.device)

    def plan(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Index batches within the token budget, longest texts first."""
        return plan_batches(
            lengths,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            min_fill=self.min_fill,
        )

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """``float32`` scores of ``documents`` for ``query``, in the documents' order."""
        check_inputs(query, documents)
        out = np.empty(len(documents), dtype=np.float32)
        if not documents:
            return out
        prepared = self.model.prepare(query, list(documents))
        # Scores stay on the device until one copy at the end: no sync between batches.
        parts: list[tuple[np.ndarray, torch.Tensor]] = []
        with torch.inference_mode():
            for rows in self.plan(prepared.lengths):
                parts.append((rows, self.model.score_prepared(prepared, rows).float()))
            scores = torch.cat([s for _, s in parts]).cpu().numpy()
        out[np.concatenate([rows for rows, _ in parts])] = scores
        return out
