"""The CTR models as torch modules: DIN, SDIM and DARE (TWIN is DARE with one shared table).

Every model has two paths that compute the same function:

- the **training path**, ``forward(items, history, mask)`` over a padded batch of histories
  (``-1`` padding, ``mask`` true on real behaviours, oldest first);
- the **serving path** over a behaviour-sequence-encoding (BSE) state: ``empty_state()``,
  ``extend_state(state, rows)`` (append newer behaviours) and ``score_state(state, items)``
  (logits of candidate items for that one user). ``score_state`` on the state of a history
  equals ``forward`` on that history (tests hold them to 1e-5).

``score_state`` reads only the state arrays named by ``score_keys``. Where ``cuda_graphs`` is
true it has no host synchronisation and no data-dependent shapes, so the serving runtime may
capture it as a CUDA graph over inputs padded to fixed sizes (:mod:`ranker.ctr.graphs`):
candidate rows padded with ``-1``, and a growing state (DARE/TWIN) padded with rows that the
boolean ``state[VALID]`` marks as no behaviour.

Sources (see docs/methods.md, "CTR models"):

- DIN — "Deep Interest Network for Click-Through Rate Prediction" (Zhou et al., KDD 2018).
- SDIM — "Sampling Is All You Need on Modeling Long-Term User Behaviors for CTR Prediction"
  (Cao et al., CIKM 2022).
- DARE — "Long-Sequence Recommendation Models Need Decoupled Embeddings" (Feng et al., ICLR
  2025); TWIN — "TWIN: TWo-stage Interest Network for Lifelong User Behavior Modeling in CTR
  Prediction at Kuaishou" (Chang et al., KDD 2023), as DARE's shared-table baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InvalidRequest
from ranker.ctr.config import CTRConfig
from ranker.ctr.layers import CTRHead, DINAttention, FieldEmbedding, simhash, topk_pool

#: A BSE state inside the model: named tensors.
State = dict[str, torch.Tensor]

#: Floats one chunk of DIN's serving-time attention may hold (64 Mi floats = 256 MiB).
DIN_CHUNK_FLOATS = 1 << 26

#: Catalogue rows SDIM hashes at once when it builds its table of item codes.
HASH_CHUNK_ROWS = 1 << 16

#: The key of a padded growing state's ``(L,)`` boolean mask: true on real behaviours.
VALID = "valid"


class CTRModule(nn.Module):
    """What every CTR model shares: the item -> category lookup, the item + category
    embedding, the prediction head, and the training/serving entry points."""

    item_category: torch.Tensor

    #: The state arrays ``score_state`` reads (empty: all of them).
    score_keys: tuple[str, ...] = ()
    #: ``score_state`` may be captured as a CUDA graph over padded inputs (module docstring).
    cuda_graphs: bool = False

    def __init__(self, config: CTRConfig, item_categories: np.ndarray | None) -> None:
        super().__init__()
        self.config = config
        lookup = torch.zeros(config.n_items + 1, dtype=torch.long)
        if item_categories is not None:
            cats = torch.as_tensor(np.asarray(item_categories, dtype=np.int64))
            if cats.shape != (config.n_items,):
                raise InvalidRequest(
                    f"{config.n_items} items but {tuple(cats.shape)} item categories"
                )
            lookup[1:] = cats
        # Row r + 1 holds the category of catalogue row r; row 0 (padding) has none.
        self.register_buffer("item_category", lookup)
        self.embedding = FieldEmbedding(
            config.n_items, config.n_categories, config.embed_dim, config.init_std
        )
        self.head = CTRHead(self.embedding.out_dim, config.mlp, config.dropout)

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """The (representation) embedding ``[item; category]`` of catalogue rows."""
        return self.embedding(rows, self.item_category[rows + 1])

    def forward(
        self, items: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(B,)`` of target ``items`` ``(B,)`` given padded ``history`` ``(B, L)``."""
        return self.head(self.embed(items), self.interest(items, history, mask))

    def score_state(self, state: State, items: torch.Tensor) -> torch.Tensor:
        """Logits ``(C,)`` of candidate ``items`` ``(C,)`` for the user whose state it is."""
        return self.head(self.embed(items), self.state_interest(state, items))

    def prepare_serving(self) -> None:
        """Build what the serving path precomputes (SDIM: its table of item codes)."""

    def interest(
        self, items: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The user-interest vector ``(B, D)`` for each target (the training path)."""
        raise NotImplementedError

    def empty_state(self) -> State:
        """The state of an empty history."""
        raise NotImplementedError

    def extend_state(self, state: State, rows: torch.Tensor) -> State:
        """``state`` with behaviours ``rows`` (known items, newer than all before) appended."""
        raise NotImplementedError

    def state_interest(self, state: State, items: torch.Tensor) -> torch.Tensor:
        """The user-interest vector ``(C, D)`` of each candidate from a state."""
        raise NotImplementedError


class RecentBehaviours(CTRModule):
    """Models whose state is per-behaviour rows of the ``max_history`` most recent behaviours
    (DIN: embeddings; DARE/TWIN: attention keys and representation values)."""

    def behaviour_state(self, rows: torch.Tensor) -> State:
        """The state rows ``(n, ...)`` of behaviours ``rows`` ``(n,)``."""
        raise NotImplementedError

    def empty_state(self) -> State:
        device = self.item_category.device
        return self.behaviour_state(torch.empty(0, dtype=torch.long, device=device))

    def extend_state(self, state: State, rows: torch.Tensor) -> State:
        new = self.behaviour_state(rows)
        keep = self.config.max_history
        return {name: torch.cat([state[name], new[name]])[-keep:] for name in new}


class DIN(RecentBehaviours):
    """Deep Interest Network: full target attention over every behaviour of the history.

    Cost grows linearly with the history at training and at serving time; ``din-short`` is the
    same model over the last 50 behaviours.
    """

    # No CUDA graphs: DIN is the full-attention baseline, its cost is the attention itself.
    score_keys = ("embeddings",)

    def __init__(self, config: CTRConfig, item_categories: np.ndarray | None) -> None:
        super().__init__(config, item_categories)
        self.attention = DINAttention(
            self.embedding.out_dim, config.din_hidden, softmax=config.din_softmax
        )

    def interest(
        self, items: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return self.attention(self.embed(items), self.embed(history), mask)

    def behaviour_state(self, rows: torch.Tensor) -> State:
        return {"embeddings": self.embed(rows)}

    def state_interest(self, state: State, items: torch.Tensor) -> torch.Tensor:
        keys = state["embeddings"].unsqueeze(0)
        mask = torch.ones(keys.shape[:2], dtype=torch.bool, device=keys.device)
        q = self.embed(items)
        per_candidate = max(1, keys.shape[1] * self.attention.pair_width)
        chunk = max(1, DIN_CHUNK_FLOATS // per_candidate)
        parts = [self.attention(part, keys, mask) for part in q.split(chunk)]
        return torch.cat(parts) if parts else q.new_zeros(0, q.shape[-1])


class SDIM(CTRModule):
    """SDIM: m SimHash functions of tau bits hash the target and every behaviour; per
    function, the behaviours sharing the target's code are summed and L2-normalised, and the
    m results are averaged. This approximates attention weighted by the collision
    probability ``(1 - angle / pi) ** tau`` without any attention computation.

    State (BSE): per (hash function, code) the sum of the behaviour embeddings hashed there
    and their count, so scoring hashes the candidates and gathers: its cost does not depend
    on the history's length. The state sums every behaviour it is given (``max_history``
    only bounds training batches). Serving hashes an item by looking its codes up in a table
    of every catalogue item's (:meth:`item_codes`).
    """

    planes: torch.Tensor
    slot_offsets: torch.Tensor

    score_keys = ("bucket_sums",)
    cuda_graphs = True

    def __init__(self, config: CTRConfig, item_categories: np.ndarray | None) -> None:
        super().__init__(config, item_categories)
        planes = torch.randn(config.hashes, config.hash_bits, self.embedding.out_dim)
        self.register_buffer("planes", planes)
        self.buckets = 2**config.hash_bits
        # Hash function j's codes occupy flat slots j * buckets ... (j + 1) * buckets - 1.
        offsets = torch.arange(config.hashes) * self.buckets
        self.register_buffer("slot_offsets", offsets, persistent=False)
        self._codes: torch.Tensor | None = None
        self._codes_of: tuple[object, ...] = ()

    def interest(
        self, items: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        e = self.embed(history)  # (B, L, D)
        same = simhash(e, self.planes) == simhash(self.embed(items), self.planes).unsqueeze(1)
        match = (same & mask.unsqueeze(-1)).to(e.dtype)  # (B, L, m)
        sums = torch.einsum("blm,bld->bmd", match, e)
        return F.normalize(sums, dim=-1).mean(dim=1)

    def item_codes(self) -> torch.Tensor:
        """The SimHash codes ``(n_items + 1, m)`` of every catalogue row (row ``r + 1`` for
        catalogue row ``r``; row 0 for an unknown item), ``uint8`` up to 8 bits, else
        ``int32``.

        The serving path hashes behaviours and candidates by looking their codes up here
        instead of projecting their embeddings on every call. The table is built on first
        use and again whenever the weights it derives from change (in place, or moved to
        another device); the training path always hashes its current embeddings.
        """
        sources = (
            self.embedding.items.weight,
            self.embedding.categories.weight,
            self.item_category,
            self.planes,
        )
        stamp = tuple((t.device, t.data_ptr(), t._version) for t in sources)
        if self._codes is None or stamp != self._codes_of:
            dtype = torch.uint8 if self.config.hash_bits <= 8 else torch.int32
            rows = torch.arange(-1, self.config.n_items, device=self.planes.device)
            # A normal tensor even when first asked for under inference mode.
            with torch.inference_mode(False), torch.no_grad():
                parts = [
                    simhash(self.embed(chunk), self.planes).to(dtype)
                    for chunk in rows.split(HASH_CHUNK_ROWS)
                ]
                self._codes = torch.cat(parts)
            self._codes_of = stamp
        return self._codes

    def prepare_serving(self) -> None:
        self.item_codes()

    def slots(self, rows: torch.Tensor) -> torch.Tensor:
        """Flat (hash function, code) bucket slots ``(..., m)`` of catalogue rows ``(...)``."""
        return self.item_codes()[rows + 1].long() + self.slot_offsets

    def empty_state(self) -> State:
        device = self.item_category.device
        m, dim = self.config.hashes, self.embedding.out_dim
        return {
            "bucket_sums": torch.zeros(m, self.buckets, dim, device=device),
            "bucket_counts": torch.zeros(m, self.buckets, dtype=torch.long, device=device),
        }

    def extend_state(self, state: State, rows: torch.Tensor) -> State:
        e = self.embed(rows)  # (n, D)
        slots = self.slots(rows).reshape(-1)  # (n * m,)
        m, dim = self.config.hashes, e.shape[-1]
        sums = (
            state["bucket_sums"]
            .reshape(-1, dim)
            .index_add(0, slots, e.unsqueeze(1).expand(-1, m, -1).reshape(-1, dim))
        )
        counts = state["bucket_counts"].reshape(-1) + torch.bincount(
            slots, minlength=m * self.buckets
        )
        return {
            "bucket_sums": sums.reshape(m, self.buckets, dim),
            "bucket_counts": counts.reshape(m, self.buckets),
        }

    def state_interest(self, state: State, items: torch.Tensor) -> torch.Tensor:
        dim = state["bucket_sums"].shape[-1]
        # Normalising the m * 2**tau buckets once, then gathering, is the same function as
        # normalising the C * m gathered copies, at a fraction of the work.
        unit = F.normalize(state["bucket_sums"].reshape(-1, dim), dim=-1)
        return F.embedding(self.slots(items), unit).mean(dim=1)  # (C, m, D) -> (C, D)


class DARE(RecentBehaviours):
    """DARE: separate **attention** and **representation** tables (items and categories).

    The target's attention embedding scores each behaviour's by scaled dot product (summed
    over the fields, i.e. the dot product of the concatenations); the top ``top_k`` are kept
    and their *representation* embeddings summed with the softmax of their scores. The head
    sees the target's representation, that aggregate and their product. The attention table
    may be narrower than the representation table (``attention_dim``).

    ``shared=True`` is TWIN: one table serves both roles.

    State (BSE): attention keys and representation rows of the ``max_history`` most recent
    behaviours; scoring is a top-k over the stored keys, bounded by ``max_history``.
    """

    score_keys = ("keys", "values")
    cuda_graphs = True

    def __init__(
        self, config: CTRConfig, item_categories: np.ndarray | None, *, shared: bool
    ) -> None:
        super().__init__(config, item_categories)
        self.attention_embedding: FieldEmbedding | None = None
        width = self.embedding.out_dim
        if not shared:
            self.attention_embedding = FieldEmbedding(
                config.n_items, config.n_categories, config.attention_width, config.init_std
            )
            width = self.attention_embedding.out_dim
        self.scale = 1.0 / math.sqrt(width)

    def attend(self, rows: torch.Tensor) -> torch.Tensor:
        """The attention embedding of catalogue rows (TWIN: the shared table)."""
        table = self.attention_embedding if self.attention_embedding is not None else self.embedding
        return table(rows, self.item_category[rows + 1])

    def interest(
        self, items: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        q = self.attend(items)  # (B, Da)
        keys = self.attend(history)  # (B, L, Da)
        scores = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1) * self.scale
        return topk_pool(scores, self.embed(history), self.config.top_k, mask)

    def behaviour_state(self, rows: torch.Tensor) -> State:
        return {"keys": self.attend(rows), "values": self.embed(rows)}

    def state_interest(self, state: State, items: torch.Tensor) -> torch.Tensor:
        scores = self.attend(items) @ state["keys"].T * self.scale  # (C, L)
        valid = state.get(VALID)  # a padded state: which rows are behaviours
        mask = None if valid is None else valid.expand_as(scores)
        return topk_pool(scores, state["values"], self.config.top_k, mask)
