"""Reranker training losses over groups of one positive and n negatives per query.

Scores arrive as ``(B, 1 + n)``: column 0 is each query's relevant document, the rest its
negatives.

- **listwise** (the default): softmax cross-entropy of picking the positive among its group,
  the localised contrastive estimation of Gao, Dai and Callan, *Rethink Training of BERT
  Rerankers in Multi-Stage Retrieval Pipeline* (ECIR 2021), which ColBERT's training also
  uses. A reranker only has to order one query's candidates; this loss asks exactly that, is
  blind to a per-query offset of the scores, and gives most gradient to the negatives that
  currently score highest — the hard ones.
- **bce**: pointwise binary cross-entropy of each (query, document) score as a logit
  (monoBERT's objective). Each pair is judged alone, so scores must also be calibrated across
  queries, which the ranking never uses.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from core.errors import InvalidRequest

RerankLoss = Literal["listwise", "bce"]
LOSSES: tuple[str, ...] = get_args(RerankLoss)


def check_loss(name: str) -> str:
    """``name`` if it is a known loss, else :class:`InvalidRequest` listing them."""
    if name not in LOSSES:
        raise InvalidRequest(f"Invalid loss {name!r}. Valid losses: {', '.join(LOSSES)}")
    return name


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of the positive (column 0) within each row."""
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), target)


def bce_loss(scores: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits: column 0 relevant, the others not."""
    labels = torch.zeros_like(scores, dtype=torch.float32)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores.float(), labels)


def rerank_loss(name: str, scores: torch.Tensor) -> torch.Tensor:
    """The loss ``name`` (``listwise`` or ``bce``) of group scores ``(B, 1 + n)``."""
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (queries, 1 + negatives), got {tuple(scores.shape)}")
    return listwise_loss(scores) if check_loss(name) == "listwise" else bce_loss(scores)
