"""InfoNCE with in-batch and hard negatives (the training objective of ``docs/methods.md``).

Query ``i`` is scored against every document of the batch: all positives (its own and the
other queries', the in-batch negatives) and all hard negatives. Scores are cosine
similarities divided by a temperature (0.05: cosines scaled by 20), and the loss is the
cross-entropy of picking the query's own positive, averaged over queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_TEMPERATURE", "info_nce_loss"]

DEFAULT_TEMPERATURE = 0.05


def info_nce_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean InfoNCE loss of ``B`` queries, computed in float32.

    ``queries`` and ``positives`` are ``(B, d)`` (row ``i`` of ``positives`` is query ``i``'s
    relevant document); ``negatives`` is ``(M, d)`` or ``(B, n, d)`` hard negatives, shared by
    all queries. The candidates of every query are ``[positives; negatives]`` (``B + M``
    rows); its label is its own positive, row ``i``. Vectors need not be normalised.

    ``exclude`` ``(B, B + M)`` bool marks candidates to leave out of query ``i``'s softmax:
    false negatives, such as another relevant document of the same query that sits in the
    batch as someone else's positive. A query's own positive cannot be excluded.
    """
    if queries.ndim != 2 or positives.shape != queries.shape:
        raise ValueError(
            f"queries and positives must both be (B, d); got {tuple(queries.shape)} and "
            f"{tuple(positives.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, dim = queries.shape
    candidates = positives
    if negatives is not None and negatives.numel() > 0:
        if negatives.shape[-1] != dim:
            raise ValueError(f"negatives have width {negatives.shape[-1]}, queries {dim}")
        candidates = torch.cat([positives, negatives.reshape(-1, dim)])
    q = F.normalize(queries.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    logits = q @ c.T / temperature
    labels = torch.arange(batch, device=logits.device)
    if exclude is not None:
        if exclude.shape != logits.shape:
            raise ValueError(
                f"exclude must be {tuple(logits.shape)} (queries x candidates), got "
                f"{tuple(exclude.shape)}"
            )
        exclude = exclude.to(device=logits.device, dtype=torch.bool)
        if exclude[labels, labels].any():
            raise ValueError("a query's own positive cannot be excluded")
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, labels)
