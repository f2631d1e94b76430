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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import InvalidRequest
from ranker.text.backbones import ResolvedBackbone, load_pretrained, load_tokenizer
from ranker.text.config import KindOptions
from ranker.text.model import PairRerankModel, pad_sequences, register_model


@dataclass
class _Pairs:
    """Tokenised (query, document) pairs: token ids and segment ids per pair."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    lengths: np.ndarray


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
        with self.tokenizing() as tok:
            enc = tok(list(queries), list(documents), truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids")
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return _Pairs(ids, types, lengths)

    def pair_scores(self, pairs: Any, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        device = self.device
        ids, mask = pad_sequences([pairs.input_ids[i] for i in rows], self.pad_id, device)
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask.long()}
        if pairs.token_type_ids is not None:
            types, _ = pad_sequences([pairs.token_type_ids[i] for i in rows], 0, device)
            inputs["token_type_ids"] = types
        logits = self.model(**inputs).logits.float()
        return logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id."""
        return int(self.tokenizer.pad_token_id or 0)
