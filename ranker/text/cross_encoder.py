"""Cross-encoder reranker (monoBERT): the query and the document in one sequence.

``[CLS] query [SEP] document [SEP]`` goes through the encoder and a classification head
reads one relevance logit (Nogueira and Cho, *Passage Re-ranking with BERT*, 2019; the
"interaction at every layer" end of the spectrum in *A Deep Look into Neural Ranking Models
for Information Retrieval*). Any local Hugging Face ``*ForSequenceClassification`` directory
works as it is (one label: its logit; two labels: logit[1] - logit[0], the relevant minus the
non-relevant class). Quarry-trained ones start from an encoder checkpoint (the bundled
MiniLM-L6) topped with a new one-output head.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from core.errors import InvalidRequest
from embedder import lean_bert
from embedder.lean_bert import classifier_logits
from embedder.tokenizing import FastTokenizer
from ranker.text.backbones import ResolvedBackbone, load_pretrained, load_tokenizer
from ranker.text.config import KindOptions
from ranker.text.graphs import GraphCaptureError, GraphedLogits
from ranker.text.model import PairRerankModel, register_model, to_device

logger = logging.getLogger(__name__)


@dataclass
class _Pairs:
    """Tokenised (query, document) pairs, without a Python list per pair: every token the
    pairs use sits once in ``pool`` (the template's special tokens, each distinct query, each
    document), and row ``i`` is the concatenation of its segments ``pool[starts[i, s] :
    starts[i, s] + sizes[i, s]]``. :meth:`matrices` lays chosen rows out as padded matrices
    with a few array operations."""

    pool: np.ndarray
    #: Segment id (0 or 1) of each pool token; None when the model takes none.
    pool_types: np.ndarray | None
    starts: np.ndarray
    sizes: np.ndarray
    lengths: np.ndarray

    def matrices(
        self, rows: Sequence[int] | np.ndarray, pad_id: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(ids, mask, types)`` of ``rows``, ``(len(rows), longest)``, padded on the right
        (``pad_id``, mask False, segment id 0); ``types`` None when the model takes none."""
        starts, sizes = self.starts[rows].ravel(), self.sizes[rows].ravel()
        lengths = self.lengths[rows]
        width = max(int(lengths.max(initial=0)), 1)
        mask = np.arange(width) < lengths[:, None]
        # Where each row's tokens come from, end to end: every segment is a run of the pool.
        total = int(sizes.sum())
        src = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)
        ids = np.full(mask.shape, pad_id, dtype=np.int64)
        ids[mask] = self.pool[src]
        types = None
        if self.pool_types is not None:
            types = np.zeros(mask.shape, dtype=np.int64)
            types[mask] = self.pool_types[src]
        return ids, mask, types

    @property
    def input_ids(self) -> list[list[int]]:
        """The rows as lists (for inspection and tests)."""
        ids, mask, _ = self.matrices(range(len(self.lengths)), 0)
        return [r[m].tolist() for r, m in zip(ids, mask, strict=True)]

    @property
    def token_type_ids(self) -> list[list[int]] | None:
        """The rows' segment ids as lists, or None."""
        _, mask, types = self.matrices(range(len(self.lengths)), 0)
        return None if types is None else [t[m].tolist() for t, m in zip(types, mask, strict=True)]

    @classmethod
    def from_rows(
        cls, rows: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None
    ) -> _Pairs:
        """Pairs already laid out row by row (one segment each)."""
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        starts = (np.cumsum(lengths) - lengths)[:, None]
        pool = _flat(rows, int(lengths.sum()))
        pool_types = None if types is None else _flat(types, int(lengths.sum()))
        return cls(pool, pool_types, starts, lengths[:, None].copy(), lengths)


def _flat(rows: Sequence[Sequence[int]], total: int) -> np.ndarray:
    """The rows' ids end to end (at least one element, so an index 0 is always valid)."""
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=total)
    return flat if total else np.zeros(1, dtype=np.int64)


@dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a pair: ``head A mid B tail``, with
    the segment id of each part (BERT: ``[CLS] A [SEP] | B [SEP]``, types 0 and 1; RoBERTa:
    ``<s> A </s></s> B </s>``). Learnt once from the tokenizer itself, so a query can be
    tokenised once for all of its documents."""

    head: tuple[int, ...]
    mid: tuple[int, ...]
    tail: tuple[int, ...]
    #: Segment id of ``head A mid`` and of ``B tail``; None when the model takes none.
    types: tuple[int, int] | None

    @property
    def specials(self) -> int:
        return len(self.head) + len(self.mid) + len(self.tail)

    @classmethod
    def learn(cls, tokenizer: Any) -> PairTemplate | None:
        """The template, or None when the tokenizer's pair layout is not of this form."""
        a = tokenizer("a", add_special_tokens=False)["input_ids"]
        b = tokenizer("b", add_special_tokens=False)["input_ids"]
        pair = tokenizer("a", "b")
        ids = list(pair["input_ids"])
        if len(a) != 1 or len(b) != 1 or ids.count(a[0]) != 1 or ids.count(b[0]) != 1:
            return None
        i, j = ids.index(a[0]), ids.index(b[0])
        if not i < j:
            return None
        raw_types = pair.get("token_type_ids")
        types = None
        if raw_types is not None:
            first, second = set(raw_types[:j]), set(raw_types[j:])
            if len(first) != 1 or len(second) != 1:
                return None
            types = (first.pop(), second.pop())
        return cls(tuple(ids[:i]), tuple(ids[i + 1 : j]), tuple(ids[j + 1 :]), types)


def longest_first(n1: np.ndarray, n2: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after Hugging Face's ``longest_first`` truncation of pairs to ``budget``
    tokens, element-wise: the shorter sequence keeps at most half of the budget (the first
    on a tie), the longer one the rest."""
    n1, n2 = np.asarray(n1, dtype=np.int64), np.asarray(n2, dtype=np.int64)
    fits = n1 + n2 <= budget
    first_longer = n1 > n2
    kept_short = np.minimum(np.where(first_longer, n2, n1), budget // 2)
    k1 = np.where(first_longer, budget - kept_short, kept_short)
    return np.where(fits, n1, k1), np.where(fits, n2, budget - k1)


def _is_sequence_classifier(resolved: ResolvedBackbone) -> bool:
    config = resolved.directory / "config.json"
    try:
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


@register_model
class CrossEncoderModel(PairRerankModel):
    """A sequence-classification model scoring (query, document) pairs."""

    kind = "cross-encoder"

    def __init__(self, model: Any, tokenizer: Any, options: KindOptions, source: str) -> None:
        super().__init__(source, tokenizer, options)
        self.model = model
        self.num_labels = int(model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise InvalidRequest(
                f"A cross-encoder needs 1 or 2 output labels, this model has {self.num_labels}"
            )
        limit = getattr(model.config, "max_position_embeddings", None) or options.max_length
        self.max_length = min(options.max_length, int(limit))
        self.template = PairTemplate.learn(tokenizer)
        #: Replay the forward as CUDA graphs on CUDA (ranker.text.graphs); off: eager.
        self.cuda_graphs = True
        self._graphs: tuple[tuple[int, ...], GraphedLogits] | None = None
        # Ids without special tokens (the template adds them), whole and cut at max_length,
        # straight from the Rust backend where there is one (embedder.tokenizing).
        self._whole = FastTokenizer(tokenizer, max_length=None, special_tokens=False)
        self._cut = FastTokenizer(tokenizer, max_length=self.max_length, special_tokens=False)

    @classmethod
    def build(
        cls, resolved: ResolvedBackbone, source: str, options: KindOptions
    ) -> CrossEncoderModel:
        from transformers import AutoModelForSequenceClassification

        # A plain encoder checkpoint gets a new one-logit head; a trained classifier keeps its.
        extra = {} if _is_sequence_classifier(resolved) else {"num_labels": 1}
        model = load_pretrained(AutoModelForSequenceClassification, resolved, **extra)
        return cls(model, load_tokenizer(resolved), options, source)

    def backbone_module(self) -> torch.nn.Module:
        return self.model.base_model

    def pretrained(self) -> Any:
        return self.model

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> _Pairs:
        """The pairs' token rows, as the tokenizer's own pair encoding with
        ``truncation=True`` would give them; each distinct query is tokenised once."""
        t = self.template
        if t is None:  # an unusual pair layout: let the tokenizer build every pair
            with self.tokenizing() as tok:
                enc = tok(
                    list(queries), list(documents), truncation=True, max_length=self.max_length
                )
            return _Pairs.from_rows(enc["input_ids"], enc.get("token_type_ids"))
        distinct = list(dict.fromkeys(queries))
        q_ids = self._whole(distinct)
        d_ids = self._cut(documents)
        which = dict(zip(distinct, range(len(distinct)), strict=True))
        q_of = np.fromiter((which[q] for q in queries), dtype=np.int64, count=len(queries))
        q_len = np.fromiter(map(len, q_ids), dtype=np.int64, count=len(q_ids))
        # A document cut at max_length keeps the truncation result unchanged unless the
        # query is longer still: then the documents' full lengths decide.
        d_len = np.fromiter(map(len, d_ids), dtype=np.int64, count=len(d_ids))
        full = np.flatnonzero((d_len == self.max_length) & (q_len[q_of] >= self.max_length))
        if len(full):
            for i, ids in zip(
                full.tolist(), self._whole([documents[i] for i in full.tolist()]), strict=True
            ):
                d_ids[i] = ids
                d_len[i] = len(ids)
        nq, nd = longest_first(q_len[q_of], d_len, self.max_length - t.specials)
        # The pool: head, mid, tail, then the queries, then the documents.
        specials = [t.head, t.mid, t.tail]
        parts = [*specials, *q_ids, *d_ids]
        sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        begin = np.cumsum(sizes) - sizes
        pool = _flat(parts, int(sizes.sum()))
        n = len(documents)
        head, mid, tail = (np.full(n, begin[k]) for k in range(3))
        q_begin = begin[3 : 3 + len(q_ids)][q_of]
        d_begin = begin[3 + len(q_ids) :]
        seg_starts = np.stack([head, q_begin, mid, d_begin, tail], axis=1)
        lens = (len(t.head), len(t.mid), len(t.tail))
        seg_sizes = np.stack(
            [np.full(n, lens[0]), nq, np.full(n, lens[1]), nd, np.full(n, lens[2])], axis=1
        )
        pool_types = None
        if t.types is not None:
            a, b = t.types
            # Head, mid and queries are the first segment; tail and documents the second.
            owner = np.repeat([a, a, b] + [a] * len(q_ids) + [b] * len(d_ids), sizes)
            pool_types = owner if len(owner) else np.zeros(1, dtype=np.int64)
        return _Pairs(pool, pool_types, seg_starts, seg_sizes, seg_sizes.sum(axis=1))

    def pair_scores(self, pairs: Any, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        ids, mask, types = pairs.matrices(rows, self.pad_id)
        logits = self._logits(ids, mask, types).float()
        return logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]

    def _logits(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None) -> torch.Tensor:
        """The classifier's logits of a padded batch given as host arrays: a BERT classifier
        in eval mode takes the lean encoder forward (same logits), and on CUDA, outside
        autograd, replays it as a CUDA graph."""
        device = self.device
        graphed = self._graphed(ids.shape, device)
        if graphed is not None:
            try:
                return graphed(ids, mask, types)
            except GraphCaptureError:
                logger.warning("CUDA graphs are off for %s", self.source, exc_info=True)
                self.cuda_graphs = False
        return classifier_logits(
            self.model,
            to_device(ids, device),
            to_device(mask, device).long(),
            to_device(types, device),
        )

    def warm(self, rows: int = 128, length: int = 256) -> int:
        """Capture the CUDA graphs of batches up to ``rows`` pairs x ``length`` tokens now
        (one query's 100 candidates of passage length fit) instead of in the first requests
        that need them. Returns how many were captured; 0 where graphs do not apply."""
        with torch.inference_mode():
            graphs = self._graphed((1, 1), self.device)
            if graphs is None:
                return 0
            t = self.template
            with_types = t.types is not None if t is not None else self._tokenizer_types()
            return graphs.warm(rows, length, with_types=with_types)

    def _tokenizer_types(self) -> bool:
        """Whether the tokenizer's own pair encoding gives segment ids."""
        return self.tokenizer("a", "b").get("token_type_ids") is not None

    def _graphed(self, shape: tuple[int, ...], device: torch.device) -> GraphedLogits | None:
        """The graphs for the model's current weights, or None where they do not apply
        (``shape``: the batch's rows x tokens)."""
        if (
            not self.cuda_graphs
            or device.type != "cuda"
            or self.model.training
            or torch.is_grad_enabled()
            or not lean_bert.supports(self.model)
        ):
            return None
        # Graphs read the parameters' memory: a move or dtype change means new graphs.
        weights = tuple(p.data_ptr() for p in self.model.parameters())
        if self._graphs is None or self._graphs[0] != weights:
            graphs = GraphedLogits(
                lambda i, m, t: classifier_logits(self.model, i, m, t),
                pad_id=self.pad_id,
                max_length=self.max_length,
                device=device,
            )
            self._graphs = (weights, graphs)
        graphs = self._graphs[1]
        rows, length = shape
        return graphs if graphs.fits(rows, length) else None

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id."""
        return int(self.tokenizer.pad_token_id or 0)
