"""K-NRM reranker: kernel pooling over the query x document term-similarity matrix.

From *End-to-End Neural Ad-hoc Ranking with Kernel Pooling* (Xiong, Dai, Callan, Liu and
Power, SIGIR 2017); an interaction-focused model in the taxonomy of *A Deep Look into Neural
Ranking Models for Information Retrieval*. With ``M[i, j] = cos(q_i, d_j)`` over the query and
document terms' embeddings, each of K RBF kernels counts soft matches of a query term at one
similarity level,

    K_k(i) = Σ_j exp(-(M[i, j] - mu_k)² / (2 sigma_k²))

the features are the log soft term frequencies summed over query terms,
``phi_k = Σ_i log K_k(i)``, and a linear layer (optionally with tanh) gives the score. The 11
kernels are the paper's: mu = 1.0 with sigma 1e-3 (exact match) and mu = 0.9, 0.7, ..., -0.9
with sigma 0.1. Kernel sums are clamped at 1e-10 before the log and the features scaled by
0.01, so a query term with no match at some level contributes a bounded -0.23 rather than
-inf. All of this runs in float32: the exact-match kernel needs cosine precision far beyond
bf16's.

Term embeddings are the backbone's input word-piece embeddings by default (frozen; trainable
with ``backbone_training="full"``) or its contextual token states (``embeddings="contextual"``);
see :class:`~ranker.text.config.KNRMOptions` for why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ranker.text.config import KindOptions, KNRMOptions
from ranker.text.interaction import InteractionModel
from ranker.text.model import group_size, register_model

#: Kernel sums are clamped here before the log (a term with no match at that level).
_MIN_KERNEL_SUM = 1e-10
#: Scale of the log soft-TF features into the linear layer.
_FEATURE_SCALE = 0.01
#: Pairs whose features are computed together when filling the training cache.
_PAIR_CHUNK = 64


@register_model
class KNRMModel(InteractionModel):
    """Term embeddings → cosine matrix → RBF kernel pooling → linear (tanh) score."""

    kind = "knrm"
    drop_special = True
    mus: torch.Tensor
    sigmas: torch.Tensor

    def __init__(self, encoder: Any, tokenizer: Any, options: KindOptions, source: str) -> None:
        assert isinstance(options, KNRMOptions)
        self._contextual = options.embeddings == "contextual"
        super().__init__(encoder, tokenizer, options, source)
        self.register_buffer("mus", torch.tensor(options.mus, dtype=torch.float32), False)
        self.register_buffer("sigmas", torch.tensor(options.sigmas, dtype=torch.float32), False)
        self.dense = nn.Linear(len(options.mus), 1)
        nn.init.uniform_(self.dense.weight, -0.01, 0.01)
        nn.init.zeros_(self.dense.bias)
        self.tanh = options.activation == "tanh"
        self._pair_features: dict[tuple[str, str], torch.Tensor] | None = None

    @property
    def contextual(self) -> bool:
        return self._contextual

    def enable_cache(self, enabled: bool = True) -> None:
        """Over a frozen backbone a pair's kernel features never change: memoise them per
        (query, document), so training touches each pair's similarity matrix once."""
        super().enable_cache(enabled)
        self._pair_features = {} if enabled else None

    def kernel_features(
        self,
        queries: torch.Tensor,
        query_keep: torch.Tensor,
        documents: torch.Tensor,
        document_keep: torch.Tensor,
    ) -> torch.Tensor:
        """The K log soft-TF features ``(B, G, K)``.

        One kernel at a time: the ``(B, G, Lq, Ld)`` similarity tensor is never expanded by K.
        """
        sim = self.similarities(queries, documents)  # (B, G, Lq, Ld)
        doc_keep = document_keep[:, :, None, :].to(sim.dtype)
        query_keep = query_keep[:, None, :].to(sim.dtype)
        features = []
        for mu, sigma in zip(self.mus.tolist(), self.sigmas.tolist(), strict=True):
            kernel = torch.exp(-((sim - mu) ** 2) / (2 * sigma**2))
            soft_tf = (kernel * doc_keep).sum(dim=-1)  # (B, G, Lq)
            logs = torch.log(soft_tf.clamp_min(_MIN_KERNEL_SUM)) * _FEATURE_SCALE
            features.append((logs * query_keep).sum(dim=-1))
        return torch.stack(features, dim=-1)

    def score_features(self, phi: torch.Tensor) -> torch.Tensor:
        """Scores from kernel features ``(..., K)``: the linear layer (and tanh)."""
        score = F.linear(phi, self.dense.weight.float(), self.dense.bias.float()).squeeze(-1)
        return torch.tanh(score) if self.tanh else score

    def interact(
        self,
        queries: torch.Tensor,
        query_keep: torch.Tensor,
        documents: torch.Tensor,
        document_keep: torch.Tensor,
    ) -> torch.Tensor:
        return self.score_features(
            self.kernel_features(queries, query_keep, documents, document_keep)
        )

    def group_scores(self, queries: Sequence[str], groups: Sequence[Sequence[str]]) -> torch.Tensor:
        cache = self._pair_features
        if cache is None:
            return super().group_scores(queries, groups)
        size = group_size(groups)
        keys = [(q, d) for q, g in zip(queries, groups, strict=True) for d in g]
        missing = [k for k in dict.fromkeys(keys) if k not in cache]
        with torch.no_grad():
            for start in range(0, len(missing), _PAIR_CHUNK):
                chunk = missing[start : start + _PAIR_CHUNK]
                q, qk = self.embed(self.encode_texts([k[0] for k in chunk], "query"), "query")
                docs = self.encode_texts([k[1] for k in chunk], "document")
                d, dk = self.embed(docs, "document")
                phi = self.kernel_features(q, qk, d[:, None], dk[:, None])[:, 0]
                cache.update(zip(chunk, phi, strict=True))
        phi = torch.stack([cache[k] for k in keys]).view(len(groups), size, -1)
        return self.score_features(phi)
