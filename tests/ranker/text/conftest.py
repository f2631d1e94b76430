"""Tiny random-config backbones for the reranker tests, saved as Hugging Face directories.

- a BERT encoder (hidden 32, 2 layers) with a WordPiece vocabulary over the test texts, for
  the cross-encoder, late-interaction and KNRM kinds;
- a Llama causal LM (hidden 32, 2 layers) with a word-level tokenizer and a small chat
  template, for the LLM kind.

Nothing is downloaded; weights are seeded. The builders are plain functions so that other
test packages (``tests/cli``) can make the same directories.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BEIR_TRAIN = FIXTURES / "tiny_beir_train"

#: Words every tiny vocabulary knows besides the fixture texts.
EXTRA_WORDS = (
    "query document is the relevant to answer yes no user assistant pasta recipe boiling "
    "tomato sauce stock market crash shares fell as spread volcano lava knead dough oven with"
)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def fixture_texts() -> list[str]:
    """Every query and document text of ``tests/fixtures/tiny_beir_train``."""
    texts = []
    for name in ("corpus.jsonl", "queries.jsonl"):
        for line in (BEIR_TRAIN / name).read_text().splitlines():
            rec = json.loads(line)
            texts.append(f"{rec.get('title', '')} {rec['text']}")
    return [*texts, EXTRA_WORDS]


def _words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})


def make_tiny_bert(path: Path, *, seed: int = 0, num_labels: int | None = None) -> Path:
    """A tiny BERT (``BertModel``; ``BertForSequenceClassification`` with ``num_labels``)
    and its WordPiece tokenizer, saved at ``path``."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        BertTokenizerFast,
    )

    path.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = [*special, *string.punctuation, *_words(fixture_texts())]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if num_labels is None:
            model = BertModel(config)
        else:
            config.num_labels = num_labels
            model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """A tiny ``LlamaForCausalLM`` with a word-level tokenizer and a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from embedder.llm import tiny_tokenizer

    tokenizer = tiny_tokenizer(fixture_texts())
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        # At the default 0.02 the output rows are so small that logit(yes) - logit(no) stays
        # within about +-0.9 whatever LoRA does to the layers below (the head is not adapted),
        # and the toy ranking task saturates there; 0.1 leaves it room to learn.
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random BERT encoder."""
    return make_tiny_bert(tmp_path_factory.mktemp("ranker") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Llama causal LM with a chat template."""
    return make_tiny_llama(tmp_path_factory.mktemp("ranker") / "tiny-llama")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads on a shared two-core machine spend
    more time waiting on each other than computing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
