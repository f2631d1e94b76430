"""Late-interaction reranker (ColBERT): MaxSim over per-token vectors.

From *ColBERT: Efficient and Effective Passage Search via Contextualized Late Interaction
over BERT* (Khattab and Zaharia, SIGIR 2020). The query and the document are encoded
separately — ``[CLS] [Q] query [SEP] [MASK]...`` and ``[CLS] [D] document [SEP]`` — the last
layer's token states are projected by a trained linear layer (to 128 dimensions by default)
and L2-normalised, and

    score(q, d) = Σ_{i in query tokens} max_{j in document tokens} cos(q_i, d_j)

Queries are padded to a fixed length with ``[MASK]`` tokens that the encoder does not attend
to but that get vectors and take part in the sum (query augmentation: they act as soft,
learned query expansion). Punctuation and padding are dropped on the document side. Because
a document's vectors do not depend on the query, they can be computed at ingest and stored
(:meth:`LateInteractionReranker.encode_documents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ranker.text.config import KindOptions, LateInteractionOptions
from ranker.text.engine import ModelReranker
from ranker.text.interaction import InteractionModel
from ranker.text.model import register_model


@register_model
class LateInteractionModel(InteractionModel):
    """Encoder + linear projection of token states; MaxSim scoring."""

    kind = "late-interaction"

    def __init__(self, encoder: Any, tokenizer: Any, options: KindOptions, source: str) -> None:
        super().__init__(encoder, tokenizer, options, source)
        assert isinstance(options, LateInteractionOptions)
        hidden = int(encoder.config.hidden_size)
        self.projection = nn.Linear(hidden, options.dim, bias=False)

    def vectors(self, states: torch.Tensor) -> torch.Tensor:
        return self.projection(states.to(self.projection.weight.dtype))

    def interact(
        self,
        queries: torch.Tensor,
        query_keep: torch.Tensor,
        documents: torch.Tensor,
        document_keep: torch.Tensor,
    ) -> torch.Tensor:
        sim = self.similarities(queries, documents)  # (B, G, Lq, Ld)
        sim = sim.masked_fill(~document_keep[:, :, None, :], -2.0)  # below any cosine
        best = sim.max(dim=-1).values  # (B, G, Lq)
        return (best * query_keep[:, None, :].float()).sum(dim=-1)


class LateInteractionReranker(ModelReranker):
    """The late-interaction :class:`~ranker.text.base.TextReranker`, which can also return the
    document token vectors that a store-at-ingest design would keep."""

    model: LateInteractionModel

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's unit token vectors ``(tokens, dim)`` float32, punctuation and padding
        left out: exactly the vectors :meth:`score` compares the query with."""
        if isinstance(texts, str):
            from core.errors import InvalidRequest

            raise InvalidRequest("texts must be a list of strings")
        out: list[np.ndarray] = [np.empty((0, 0), dtype=np.float32)] * len(texts)
        if not texts:
            return out
        encoded = self.model.encode_texts(list(texts), "document")
        lengths = np.fromiter(map(len, encoded.ids), dtype=np.int64, count=len(encoded.ids))
        with torch.inference_mode():
            for rows in self.plan(lengths):
                vecs, keep = self.model.embed(encoded.take(rows), "document")
                vec_np, keep_np = vecs.cpu().numpy(), keep.cpu().numpy()
                for j, i in enumerate(rows):
                    out[i] = np.ascontiguousarray(vec_np[j][keep_np[j]], dtype=np.float32)
        return out

    def score_encoded(self, query: str, documents: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of stored document vectors (from :meth:`encode_documents`) for ``query``;
        equal to :meth:`score` on the texts."""
        out = np.empty(len(documents), dtype=np.float32)
        if not len(documents):
            return out
        with torch.inference_mode():
            q, qk = self.model.embed(self.model.encode_texts([query], "query"), "query")
            qv = q[0][qk[0]].float().cpu().numpy()  # (Lq, d)
        for i, d in enumerate(documents):
            out[i] = float((qv @ d.T).max(axis=1).sum()) if d.size else 0.0
        return out
