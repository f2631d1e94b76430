"""Serving a :class:`~ranker.text.model.RerankModel`: device, precision and batching.

One loop serves every kind. A call tokenises the query's documents once
(:meth:`~ranker.text.model.RerankModel.prepare`), plans batches by a token budget with
:func:`embedder.batching.plan_batches` (longest first, so each batch holds texts of similar
length and little compute goes to padding; on a GPU :func:`embedder.batching.plan_bucketed`,
which weighs the padding of CUDA-graph buckets against the cost of a pass), scores each batch
under ``torch.inference_mode`` and scatters the scores back to input order; results do not
depend on the batching. On CUDA the model runs in bf16 (fp16 where bf16 is unsupported); the
kinds keep their precision-critical arithmetic (normalisation, similarities, kernels, the
yes/no logits) in float32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from embedder.base import resolve_device
from embedder.batching import plan_batches, plan_bucketed
from ranker.text.base import check_inputs
from ranker.text.graphs import LENGTH_STEP, ROW_STEP
from ranker.text.model import PairRerankModel, RerankModel
from ranker.text.registry import LoadOptions

logger = logging.getLogger(__name__)

#: On the CPU compute follows padded tokens: a batch closes before real tokens fill less
#: than this share of it (see ``plan_batches``). On a GPU an extra pass costs more.
CPU_MIN_FILL = 0.75


#: Pairs tokenised per step of :meth:`ModelReranker.score_many` (the next step's tokenising
#: overlaps this one's forward passes).
PAIRS_PER_CHUNK = 1024

#: On a GPU, what one more forward pass is worth in padded tokens (its launches and copies):
#: a query's candidates are cut into batches of similar length only where the padding saved
#: exceeds this (:func:`embedder.batching.plan_bucketed`).
CUDA_BATCH_COST = 4096

#: The default token budget on a GPU: a typical query's 100 candidates in one pass (one pass
#: of 100 x 182 tokens took 9.4 ms per call on an H200 against 13.5 ms in two passes of 16k).
CUDA_BATCH_TOKENS = 65_536


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
        cuda = self.device.startswith("cuda")
        self.batch_tokens = options.batch_tokens or (CUDA_BATCH_TOKENS if cuda else 16_384)
        self.max_batch_size = options.max_batch_size
        self.min_fill = CPU_MIN_FILL if self.device == "cpu" else 0.0
        #: Padded tokens one more pass costs on a GPU (None: plan as on the CPU).
        self.batch_cost: int | None = CUDA_BATCH_COST if cuda else None
        model.eval()
        model.to(device=self.device, dtype=inference_dtype(self.device))
        logger.info("reranker %s (%s) on %s", name, self.kind, self.device)

    def warm(self) -> int:
        """Do now what a first request would otherwise pay for: on CUDA, capture the
        cross-encoder's graphs for batches up to 128 pairs x 256 tokens. Returns the graphs
        captured (0 for other kinds and on the CPU)."""
        warm = getattr(self.model, "warm", None)
        if warm is None or not self.device.startswith("cuda"):
            return 0
        t0 = time.perf_counter()
        made = int(warm())
        logger.info(
            "%s: %d CUDA graphs captured in %.1f s", self.name, made, time.perf_counter() - t0
        )
        return made

    def plan(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Index batches within the token budget, longest texts first; on a GPU, where each
        batch is padded to a CUDA-graph bucket, cut where that saves more padding than a pass
        costs."""
        if self.batch_cost is not None:
            return plan_bucketed(
                lengths,
                batch_tokens=self.batch_tokens,
                max_batch_size=self.max_batch_size,
                row_step=ROW_STEP,
                length_step=LENGTH_STEP,
                batch_cost=self.batch_cost,
            )
        return plan_batches(
            lengths,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            min_fill=self.min_fill,
        )

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """``float32`` scores of ``documents`` for ``query``, in the documents' order."""
        check_inputs(query, documents)
        if not documents:
            return np.empty(0, dtype=np.float32)
        return self._run(self.model.prepare(query, list(documents)), len(documents))

    def score_many(
        self, queries: Sequence[str], groups: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Scores of each query's documents, like :meth:`score` per query.

        Kinds that read each pair as one sequence (cross-encoder, LLM) share batches across
        the queries, planned by one token budget over all pairs, and the next chunk of pairs
        is tokenised on a helper thread while the current one runs; the other kinds score one
        query at a time.
        """
        if len(queries) != len(groups):
            raise ValueError("one group of documents per query")
        for q, g in zip(queries, groups, strict=True):
            check_inputs(q, g)
        if not isinstance(self.model, PairRerankModel) or len(queries) < 2:
            return [self.score(q, g) for q, g in zip(queries, groups, strict=True)]
        sizes = [len(g) for g in groups]
        flat_q = [q for q, g in zip(queries, groups, strict=True) for _ in g]
        flat_d = [d for g in groups for d in g]
        scores = np.empty(len(flat_d), dtype=np.float32)
        chunks = [
            (s, min(s + PAIRS_PER_CHUNK, len(flat_d)))
            for s in range(0, len(flat_d), PAIRS_PER_CHUNK)
        ]
        if chunks:
            model = self.model
            with ThreadPoolExecutor(1, thread_name_prefix="rerank-tokenize") as pool:
                pending = pool.submit(
                    model.encode_pairs, flat_q[: chunks[0][1]], flat_d[: chunks[0][1]]
                )
                for k, (start, end) in enumerate(chunks):
                    prepared = pending.result()
                    if k + 1 < len(chunks):
                        a, b = chunks[k + 1]
                        pending = pool.submit(model.encode_pairs, flat_q[a:b], flat_d[a:b])
                    scores[start:end] = self._run(prepared, end - start)
        bounds = np.cumsum([0, *sizes])
        return [scores[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]

    def _run(self, prepared: Any, n: int) -> np.ndarray:
        """Scores of ``n`` prepared documents: token-budget batches, one device sync."""
        out = np.empty(n, dtype=np.float32)
        # Scores stay on the device until one copy at the end: no sync between batches.
        parts: list[tuple[np.ndarray, torch.Tensor]] = []
        with torch.inference_mode():
            for rows in self.plan(prepared.lengths):
                parts.append((rows, self.model.score_prepared(prepared, rows).float()))
            scores = torch.cat([s for _, s in parts]).cpu().numpy()
        out[np.concatenate([rows for rows, _ in parts])] = scores
        return out
