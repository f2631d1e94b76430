"""FastTokenizer returns exactly the wrapper's ids, from any number of threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from embedder.tokenizing import FastTokenizer

TEXTS = [
    "",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "UPPER case, MiXeD; punctuation!? (brackets) [more] {and} 'quotes' \"double\"",
    "Ünïcödé àccents, ß, ﬁ ligature, Ωmega, 中文字符, 日本語テキスト, emoji 🙂🚀",
    "hyphen-ated words, e.g. state-of-the-art, 3.14159 and 1,000,000 numbers",
    "tabs\tand\nnewlines\r\nmixed",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    " ".join(f"word{i}" for i in range(400)),  # far past any max_length below
    "[CLS] [SEP] [PAD] [MASK] look like special tokens",
]


@pytest.fixture(scope="module")
def wrapper() -> Any:
    from transformers import AutoTokenizer

    from embedder.registry import resolve_model_path

    return AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")))


@pytest.mark.parametrize("max_length", [None, 5, 16, 128, 256])
@pytest.mark.parametrize("special", [True, False])
def test_ids_equal_the_wrappers(wrapper: Any, max_length: int | None, special: bool) -> None:
    fast = FastTokenizer(wrapper, max_length=max_length, special_tokens=special)
    assert fast.uses_backend
    options: dict[str, Any] = {"add_special_tokens": special}
    if max_length is not None:
        options.update(truncation=True, max_length=max_length)
    expected = [list(ids) for ids in wrapper(TEXTS, **options)["input_ids"]]
    assert fast(TEXTS) == expected
    if max_length is not None:
        assert max(map(len, fast(TEXTS))) == max_length


def test_the_wrapper_is_left_as_it_was(wrapper: Any) -> None:
    """The private copy's truncation does not leak into the shared tokenizer."""
    FastTokenizer(wrapper, max_length=4)
    assert len(wrapper(TEXTS[-2])["input_ids"]) > 4


def test_concurrent_callers_get_their_own_ids(wrapper: Any) -> None:
    fast = FastTokenizer(wrapper, max_length=64)
    batches = [[f"{t} {i}" for t in TEXTS] for i in range(24)]
    expected = [fast(b) for b in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(fast, batches))
    assert got == expected


def test_bert_single_texts_have_zero_segment_ids(wrapper: Any) -> None:
    assert FastTokenizer(wrapper, max_length=16).single_text_types_zero()


class _PythonTokenizer:
    """A tokenizer without a Rust backend (the shape of a slow Hugging Face tokenizer)."""

    is_fast = False

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, texts: list[str], **options: Any) -> dict[str, Any]:
        self.calls.append(options)
        ids = [[len(w) for w in t.split()] for t in texts]
        if options.get("truncation"):
            ids = [row[: options["max_length"]] for row in ids]
        return {"input_ids": ids, "token_type_ids": [[1] * len(r) for r in ids]}


def test_a_tokenizer_without_backend_goes_through_the_wrapper() -> None:
    slow = _PythonTokenizer()
    fast = FastTokenizer(slow, max_length=2, special_tokens=False)
    assert not fast.uses_backend
    assert fast(["aa bbb c", "dddd"]) == [[2, 3], [4]]
    assert slow.calls[-1] == {"add_special_tokens": False, "truncation": True, "max_length": 2}
    assert fast([]) == []
    assert not fast.single_text_types_zero()
