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

import threading
from collections.abc import Sequence
from typing import Any


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

    @property
    def uses_backend(self) -> bool:
        """Whether calls go to the private Rust backend (else through the wrapper)."""
        return self._backend is not None

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        if not texts:
            return []
        if self._backend is not None:
            encodings = self._encode(list(texts), add_special_tokens=self.special_tokens)
            return [e.ids for e in encodings]
        options: dict[str, Any] = {"add_special_tokens": self.special_tokens}
        if self.max_length is not None:
            options.update(truncation=True, max_length=self.max_length)
        with self._lock:
            out = self.tokenizer(list(texts), **options)
        return [list(ids) for ids in out["input_ids"]]

    def single_text_types_zero(self) -> bool:
        """Whether the tokenizer gives one text (special tokens included) segment ids that
        are all zero, or none: then a model may be called without ``token_type_ids``."""
        types = self.tokenizer("a", return_token_type_ids=True).get("token_type_ids")
        return not types or not any(types)
