"""Dense reranker: the cosine of the query's and the document's pooled embeddings, trainable.

The bi-encoder of *Sentence-BERT* (Reimers and Gurevych, 2019) and of dense retrieval: the
query and the document are encoded apart, their last-layer token states averaged over the
attended tokens (special tokens included, as sentence-transformers' mean pooling does) and
L2-normalised, and the score is ``scale * cos(q, d)`` (``scale`` 20, sentence-transformers'
``MultipleNegativesRankingLoss`` default, the inverse of a 0.05 temperature: it only sets how
sharp the listwise softmax of training is; the order is the cosine's).

Over the bundled ``all-MiniLM-L6-v2`` and untrained, this is exactly the ``embedder:``
stand-in; trained by ``quarry train reranker --kind dense`` on judged queries (k-fold on
DL19) it starts from a model that already ranks well and moves as little as the data asks,
which suits a few dozen training queries better than a cross-encoder's new head does. A
document's pooled vector does not depend on the query, so it could be stored at ingest.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ranker.text.config import DenseOptions, KindOptions
from ranker.text.interaction import Encoded, InteractionModel
from ranker.text.model import register_model


@register_model
class DenseModel(InteractionModel):
    """Encoder → mean-pooled, L2-normalised text vectors → scaled cosine."""

    kind = "dense"

    def __init__(self, encoder: Any, tokenizer: Any, options: KindOptions, source: str) -> None:
        assert isinstance(options, DenseOptions)
        super().__init__(encoder, tokenizer, options, source)
        self.scale = float(options.scale)

    def embed(self, encoded: Encoded, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One unit vector per text, shaped ``(N, 1, d)`` with an all-true keep mask ``(N, 1)``
        (the token-interaction layout with a single "token")."""
        states, valid = self.token_states(encoded)
        weights = valid.to(states.dtype)[..., None]
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        vectors = F.normalize(pooled.float(), dim=-1)[:, None, :]
        return vectors, torch.ones(vectors.shape[:2], dtype=torch.bool, device=vectors.device)

    def interact(
        self,
        queries: torch.Tensor,
        query_keep: torch.Tensor,
        documents: torch.Tensor,
        document_keep: torch.Tensor,
    ) -> torch.Tensor:
        sim = self.similarities(queries, documents)  # (B, G, 1, 1)
        return self.scale * sim[..., 0, 0]
