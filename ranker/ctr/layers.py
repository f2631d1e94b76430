"""Building blocks shared by the CTR models: embeddings of item + category, the MLP and
prediction head, and the attention helpers (masked softmax, DIN's activation unit, top-k
pooling, SimHash codes).

Rows are catalogue rows; ``-1`` is padding (or an unknown item) and embeds as zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.errors import InvalidRequest

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise InvalidRequest(
            f"Unknown activation {name!r}. Valid activations: {', '.join(ACTIVATIONS)}"
        ) from None


class FieldEmbedding(nn.Module):
    """One table per field (item, category); a behaviour's vector is ``[item; category]``.

    Item row ``r`` is table row ``r + 1``: row 0 is padding (``-1``) and stays zero, as does
    category 0 ("no category").
    """

    def __init__(self, n_items: int, n_categories: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.dim = dim
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.categories = nn.Embedding(n_categories, dim, padding_idx=0)
        for table in (self.items, self.categories):
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[0].zero_()

    @property
    def out_dim(self) -> int:
        return 2 * self.dim

    def forward(self, rows: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.items(rows + 1), self.categories(categories)], dim=-1)


class MLP(nn.Sequential):
    """``Linear -> activation -> dropout`` per hidden width, then a linear output layer."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class CTRHead(nn.Module):
    """The prediction head every model shares: an MLP over ``[target, interest, target *
    interest]`` (DARE's feature set) -> one logit."""

    def __init__(self, dim: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.mlp = MLP(3 * dim, hidden, 1, dropout=dropout)

    def forward(self, target: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        features = torch.cat([target, interest, target * interest], dim=-1)
        return self.mlp(features).squeeze(-1)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where ``mask`` is true; rows with nothing true are all zero
    (no NaN, in the forward or the backward pass)."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_l weights[n, l] * values[n, l]``: ``(N, L)`` x ``(N|1, L, D)`` -> ``(N, D)``."""
    return torch.matmul(weights.unsqueeze(1), values).squeeze(1)


def topk_pool(
    scores: torch.Tensor, values: torch.Tensor, k: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax-weighted sum of the values of the ``k`` best-scoring behaviours.

    ``scores`` is ``(N, L)``; ``values`` is ``(N, L, D)`` or shared by all rows ``(L, D)``;
    ``mask`` (``(N, L)``, optional) marks the real behaviours. Fewer than ``k`` real
    behaviours: all of them.
    """
    n, length = scores.shape
    if length == 0:
        return scores.new_zeros(n, values.shape[-1])
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    k = min(k, length)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    top, index = filled.topk(k, dim=-1)
    weights = masked_softmax(top, mask.gather(-1, index))
    if values.dim() == 2:
        picked = values[index]
    else:
        picked = values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return weighted_sum(weights, picked)


class DINAttention(nn.Module):
    """DIN's activation unit: an MLP over ``[q, k, q - k, q * k]`` scores each behaviour ``k``
    against the target ``q``; the interest is the weighted sum of the behaviours.

    The first layer is applied without building the ``4D`` input of every pair: it is linear,
    so ``W [q, k, q - k, q * k] = (W_q + W_d) q + (W_k - W_d) k + W_p (q * k)``, which is the
    same function with a per-pair cost of one ``D x H`` product (this is what lets the
    serving path score 1,000 candidates against 10,000 behaviours in chunks).
    """

    def __init__(self, dim: int, hidden: Sequence[int], *, softmax: bool) -> None:
        super().__init__()
        self.dim = dim
        self.softmax = softmax
        self.first = nn.Linear(4 * dim, hidden[0])
        self.rest = nn.Sequential(nn.PReLU(), MLP(hidden[0], hidden[1:], 1, activation="prelu"))

    @property
    def pair_width(self) -> int:
        """Floats one (target, behaviour) pair holds at once (for chunking)."""
        return self.dim + self.first.out_features

    def forward(self, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``q`` ``(N, D)``, ``keys`` ``(N|1, L, D)``, ``mask`` ``(N|1, L)`` -> ``(N, D)``."""
        w_q, w_k, w_d, w_p = self.first.weight.split(self.dim, dim=1)
        hidden = (
            (q @ (w_q + w_d).T + self.first.bias).unsqueeze(1)
            + keys @ (w_k - w_d).T
            + (q.unsqueeze(1) * keys) @ w_p.T
        )
        scores = self.rest(hidden).squeeze(-1)
        mask = mask.expand_as(scores)
        weights = masked_softmax(scores, mask) if self.softmax else scores * mask
        return weighted_sum(weights, keys)


def simhash(x: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """SimHash codes: ``planes`` ``(m, tau, D)`` random hyperplanes; each of the m functions
    maps a vector to the ``tau``-bit integer of the signs of its projections. ``(..., D)`` ->
    ``(..., m)`` int64 in ``[0, 2**tau)``."""
    bits = torch.einsum("...d,mtd->...mt", x, planes) > 0
    weights = 2 ** torch.arange(planes.shape[1], device=x.device)
    return (bits.long() * weights).sum(-1)
