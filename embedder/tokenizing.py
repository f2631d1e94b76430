"""Token ids straight from a fast tokenizer's Rust backend.

A Hugging Face fast tokenizer called on a batch spends most of its time after the Rust
encoder returns: it converts every encoding into Python lists of ids, segment ids, masks and
overflow records, one sequence at a time, on one core. On the bundled MiniLM and SciFact's
5,183 abstracts (1.24M tokens, 2 cores) the wrapper took 2.16 s, the backend's
``encode_batch_fast`` 1.32 s plus 0.05 s to read the ids (``bench/results`` has the GPU
host's figures, where the Rust part runs on 16 cores and the wrapper's share grows).

:class:`FastTokenizer` keeps a private copy of the backend with the truncation it needs set
once and never changed again, so it needs no lock: concurrent callers share it (a shared
backend whose settings the wrapper changes per call raises "Already borrowed" when used from
two threads). It returns exactly the ids the wrapper returns for ``truncation=True,
max_length=N`` (tests hold the two equal); tokenizers without a Rust backend (slow, Python
ones) go through the wrapper under a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

#: ASCII characters BERT's ``clean_text`` drops (control characters but tab, LF and CR) and
#: maps to a space (tab, LF, CR).
_ASCII_CONTROL = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
_ASCII_SPACE = b"\t\n\r"


def ascii_bert_table(normalizer: dict[str, Any] | None) -> tuple[bytes, bytes] | None:
    """``(table, delete)`` for ``bytes.translate`` that does on ASCII text what the serialised
    ``normalizer`` does, or None when it is not BERT's (or there is none to skip)."""
    if not normalizer or normalizer.get("type") != "BertNormalizer":
        return None
    table = bytearray(range(256))
    delete = b""
    if normalizer.get("clean_text", True):
        delete = _ASCII_CONTROL
        for c in _ASCII_SPACE:
            table[c] = ord(" ")
    if normalizer.get("lowercase", True):
        for c in range(ord("A"), ord("Z") + 1):
            table[c] = c + 32
    # Chinese characters and accents do not occur in ASCII: those steps change nothing.
    return bytes(table), delete


class FastTokenizer:
    """``tokenizer(texts, truncation=..., max_length=..., add_special_tokens=...)["input_ids"]``,
    from the Rust backend where there is one. Thread-safe.

    ``max_length`` None: no truncation. ``special_tokens``: add the model's special tokens
    (``[CLS] ... [SEP]``), counted within ``max_length`` as the wrapper counts them.
    """

    def __init__(
        self, tokenizer: Any, *, max_length: int | None, special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.special_tokens = special_tokens
        self._lock = threading.Lock()
        backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        self._backend: Any = None
        self._ascii: tuple[bytes, bytes] | None = None
        self._added: tuple[str, ...] = ()
        if backend is not None:
            from tokenizers import Tokenizer

            own = Tokenizer.from_str(backend.to_str())
            own.no_padding()
            if max_length is None:
                own.no_truncation()
            else:
                side = getattr(tokenizer, "truncation_side", "right")
                own.enable_truncation(max_length, strategy="longest_first", direction=side)
            self._backend = own
            # encode_batch_fast (tokenizers >= 0.21) skips the character offsets.
            self._encode = getattr(own, "encode_batch_fast", None) or own.encode_batch
            spec = json.loads(own.to_str())
            self._ascii = ascii_bert_table(spec.get("normalizer"))
            # Added tokens ([CLS], [MASK] ...) are matched before normalising, some by case:
            # a text holding one, in any case, takes the full pipeline.
            self._added = tuple(
                {str(t["content"]).lower() for t in spec.get("added_tokens") or ()} - {""}
            )
            if self._ascii is not None:
                bare = Tokenizer.from_str(own.to_str())
                bare.normalizer = None
                self._encode_ascii = getattr(bare, "encode_batch_fast", None) or bare.encode_batch

    @property
    def uses_backend(self) -> bool:
        """Whether calls go to the private Rust backend (else through the wrapper)."""
        return self._backend is not None

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        if not texts:
            return []
        if self._backend is not None:
            if self._ascii is not None:
                return self._encode_split(texts)
            encodings = self._encode(list(texts), add_special_tokens=self.special_tokens)
            return [e.ids for e in encodings]
        options: dict[str, Any] = {"add_special_tokens": self.special_tokens}
        if self.max_length is not None:
            options.update(truncation=True, max_length=self.max_length)
        with self._lock:
            out = self.tokenizer(list(texts), **options)
        return [list(ids) for ids in out["input_ids"]]

    def _encode_split(self, texts: Sequence[str]) -> list[list[int]]:
        """ASCII texts normalised by the byte table and encoded without the normaliser, the
        others through the full pipeline; ids in the input order."""
        assert self._ascii is not None
        table, delete = self._ascii
        special = self.special_tokens
        added = self._added
        ascii_at = [
            i
            for i, t in enumerate(texts)
            if t.isascii() and not (added and any(a in t.lower() for a in added))
        ]
        clean = [
            texts[i].encode("ascii").translate(table, delete).decode("ascii") for i in ascii_at
        ]
        fast = [e.ids for e in self._encode_ascii(clean, add_special_tokens=special)]
        if len(ascii_at) == len(texts):
            return fast
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(ascii_at, fast, strict=True):
            out[i] = ids
        taken = set(ascii_at)
        rest = [i for i in range(len(texts)) if i not in taken]
        slow = self._encode([texts[i] for i in rest], add_special_tokens=special)
        for i, enc in zip(rest, slow, strict=True):
            out[i] = enc.ids
        return out

    def single_text_types_zero(self) -> bool:
        """Whether the tokenizer gives one text (special tokens included) segment ids that
        are all zero, or none: then a model may be called without ``token_type_ids``."""
        types = self.tokenizer("a", return_token_type_ids=True).get("token_type_ids")
        return not types or not any(types)
