"""Shared base of the token-interaction kinds (late interaction and K-NRM).

Both encode the query and each document *separately* into token vectors with an encoder
backbone, L2-normalise them and compare every query token with every document token by cosine
similarity; they differ in what they read from that ``query x document`` matrix (ColBERT:
the best match of each query token; K-NRM: soft match counts under RBF kernels). That is the
"interaction-focused" family of *A Deep Look into Neural Ranking Models for Information
Retrieval*, with the document side computable ahead of time.

The base owns tokenisation (``[CLS] marker text [SEP]``, optional ``[MASK]`` padding of the
query), the encoder forward, masks of which tokens take part, and — for training over a frozen
backbone, where the encoder output is a fixed function of the text — a cache of token states,
so that each training text runs through the encoder once.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedder.lean_bert import last_hidden_state
from ranker.text.backbones import ResolvedBackbone, load_pretrained, load_tokenizer
from ranker.text.config import KindOptions
from ranker.text.model import RerankModel, group_size, pad_sequences


@dataclass
class Encoded:
    """Token rows of texts: ids (markers and special tokens included) and how many leading
    tokens of each row the encoder attends to (the rest are query-augmentation ``[MASK]``s)."""

    ids: list[list[int]]
    attended: list[int]

    def take(self, rows: Sequence[int] | np.ndarray) -> Encoded:
        """The rows ``rows``, in that order."""
        return Encoded([self.ids[i] for i in rows], [self.attended[i] for i in rows])


@dataclass
class InteractionPrepared:
    """One query and its documents, tokenised; the query's vectors once computed."""

    query: Encoded
    documents: Encoded
    lengths: np.ndarray
    query_vectors: tuple[torch.Tensor, torch.Tensor] | None = field(default=None)


class InteractionModel(RerankModel):
    """Encoder backbone → token vectors → a kind-specific interaction (see the module doc)."""

    #: Leave ``[CLS]``/``[SEP]`` (and punctuation on the query side too) out of the
    #: interaction, as K-NRM does; ColBERT keeps them.
    drop_special: bool = False
    punctuation_ids: torch.Tensor
    special_ids: torch.Tensor

    @property
    def contextual(self) -> bool:
        """Whether token vectors come from the last layer (else the input word-piece
        embeddings: no transformer runs)."""
        return True

    def __init__(self, encoder: Any, tokenizer: Any, options: KindOptions, source: str) -> None:
        super().__init__(source, tokenizer, options)
        self.encoder = encoder
        limit = int(getattr(encoder.config, "max_position_embeddings", 512))
        self.document_length = min(options.max_length, limit)
        self.query_length = min(int(getattr(options, "query_length", 32)), limit)
        tok = tokenizer
        self.cls_id = int(tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id)
        self.sep_id = int(tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id or 0)
        mask_id = tok.mask_token_id
        self.mask_id = int(mask_id) if mask_id is not None else self.pad_id
        self.query_marker_ids = self._marker_ids(str(getattr(options, "query_marker", "")))
        self.document_marker_ids = self._marker_ids(str(getattr(options, "document_marker", "")))
        # ColBERT's query augmentation: [MASK] padding that is not attended to but scored.
        self.augment_query = bool(getattr(options, "query_augmentation", False))
        skip = bool(getattr(options, "skip_punctuation", False))
        punct = self._single_token_ids(string.punctuation) if skip else []
        self.register_buffer("punctuation_ids", torch.tensor(punct, dtype=torch.long), False)
        self.register_buffer(
            "special_ids", torch.tensor([self.cls_id, self.sep_id], dtype=torch.long), False
        )
        self._cache: dict[tuple[int, ...], torch.Tensor] | None = None

    @classmethod
    def build(
        cls, resolved: ResolvedBackbone, source: str, options: KindOptions
    ) -> InteractionModel:
        from transformers import AutoModel

        encoder = load_pretrained(AutoModel, resolved)
        return cls(encoder, load_tokenizer(resolved), options, source)

    def backbone_module(self) -> nn.Module:
        return self.encoder

    # --- tokens -------------------------------------------------------------------------------

    def _marker_ids(self, marker: str) -> list[int]:
        """A marker's ids: one vocabulary token (``[unused0]``) or the tokens of a text."""
        if not marker:
            return []
        tok = self.tokenizer
        single = tok.convert_tokens_to_ids(marker)
        if single is not None and single != tok.unk_token_id:
            return [int(single)]
        return [int(i) for i in tok(marker, add_special_tokens=False)["input_ids"]]

    def _single_token_ids(self, chars: str) -> list[int]:
        tok = self.tokenizer
        ids = {tok.convert_tokens_to_ids(c) for c in chars}
        return sorted(int(i) for i in ids if i is not None and i != tok.unk_token_id)

    def encode_texts(self, texts: Sequence[str], side: str) -> Encoded:
        """Token rows of queries (``side="query"``) or documents (``"document"``)."""
        query = side == "query"
        marker = self.query_marker_ids if query else self.document_marker_ids
        limit = (self.query_length if query else self.document_length) - 2 - len(marker)
        with self.tokenizing() as tok:
            pieces = tok(
                list(texts), add_special_tokens=False, truncation=True, max_length=max(limit, 1)
            )["input_ids"]
        rows = [[self.cls_id, *marker, *p[: max(limit, 0)], self.sep_id] for p in pieces]
        attended = [len(r) for r in rows]
        if query and self.augment_query:
            rows = [r + [self.mask_id] * (self.query_length - len(r)) for r in rows]
        return Encoded(rows, attended)

    # --- vectors ------------------------------------------------------------------------------

    def enable_cache(self, enabled: bool = True) -> None:
        """Memoise token states per token row (only valid while the backbone is frozen)."""
        self._cache = {} if enabled else None

    def _run_encoder(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        if not self.contextual:
            return self.encoder.get_input_embeddings()(ids)
        # A BERT encoder in eval mode takes the lean forward (same states).
        return last_hidden_state(self.encoder, ids, attention.long())

    def token_states(self, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states ``(N, L, H)`` of padded rows and the mask of real positions."""
        device = self.device
        ids, valid = pad_sequences(encoded.ids, self.pad_id, device)
        width = ids.shape[1]
        attended = torch.tensor(encoded.attended, device=device)
        attention = torch.arange(width, device=device)[None, :] < attended[:, None]
        if self._cache is None or not self.contextual:
            return self._run_encoder(ids, attention), valid
        keys = [tuple(r) for r in encoded.ids]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            sub = torch.tensor(missing, device=device)
            with torch.no_grad():
                states = self._run_encoder(ids[sub], attention[sub]).detach()
            for j, i in enumerate(missing):
                self._cache[keys[i]] = states[j, : len(encoded.ids[i])].clone()
        rows = [self._cache[k] for k in keys]
        out = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
        return out, valid

    def vectors(self, states: torch.Tensor) -> torch.Tensor:
        """Token vectors from backbone states (identity here; late interaction projects)."""
        return states

    def keep_mask(self, ids: torch.Tensor, valid: torch.Tensor, side: str) -> torch.Tensor:
        """Which positions take part in the interaction: real tokens, less punctuation on the
        document side (and both sides' special tokens when ``drop_special``)."""
        keep = valid.clone()
        skip_punct = self.punctuation_ids.numel() > 0 and (side == "document" or self.drop_special)
        if skip_punct:
            keep &= ~torch.isin(ids, self.punctuation_ids)
        if self.drop_special:
            keep &= ~torch.isin(ids, self.special_ids)
        return keep

    def embed(self, encoded: Encoded, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised float32 token vectors ``(N, L, d)`` and their keep mask ``(N, L)``."""
        states, valid = self.token_states(encoded)
        ids, _ = pad_sequences(encoded.ids, self.pad_id, states.device)
        vecs = F.normalize(self.vectors(states).float(), dim=-1)
        return vecs, self.keep_mask(ids, valid, side)

    # --- scoring ------------------------------------------------------------------------------

    def interact(
        self,
        queries: torch.Tensor,
        query_keep: torch.Tensor,
        documents: torch.Tensor,
        document_keep: torch.Tensor,
    ) -> torch.Tensor:
        """Scores ``(B, G)`` from query vectors ``(B, Lq, d)`` and document vectors
        ``(B, G, Ld, d)`` with their keep masks."""
        raise NotImplementedError

    @staticmethod
    def similarities(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """Cosine matrix ``(B, G, Lq, Ld)`` of unit vectors, float32."""
        return torch.einsum("bqd,bgkd->bgqk", queries, documents)

    def group_scores(self, queries: Sequence[str], groups: Sequence[Sequence[str]]) -> torch.Tensor:
        size = group_size(groups)
        q, qk = self.embed(self.encode_texts(queries, "query"), "query")
        docs = self.encode_texts([t for g in groups for t in g], "document")
        d, dk = self.embed(docs, "document")
        b = len(groups)
        return self.interact(q, qk, d.view(b, size, *d.shape[1:]), dk.view(b, size, -1))

    def prepare(self, query: str, documents: Sequence[str]) -> InteractionPrepared:
        docs = self.encode_texts(documents, "document")
        lengths = np.fromiter(map(len, docs.ids), dtype=np.int64, count=len(docs.ids))
        return InteractionPrepared(self.encode_texts([query], "query"), docs, lengths)

    def score_prepared(self, prepared: Any, rows: np.ndarray) -> torch.Tensor:
        if prepared.query_vectors is None:
            prepared.query_vectors = self.embed(prepared.query, "query")
        q, qk = prepared.query_vectors
        d, dk = self.embed(prepared.documents.take(rows), "document")
        return self.interact(q, qk, d[None], dk[None])[0]
