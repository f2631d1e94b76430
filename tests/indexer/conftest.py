"""Shared fixtures for indexer tests: seeded synthetic vectors and texts, no downloads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from indexer.lexical import LexicalIndex

DIM = 32


@pytest.fixture
def make_vectors() -> Callable[..., np.ndarray]:
    """``make_vectors(n, seed=0, dim=DIM)``: clustered float32 vectors, like real embeddings."""

    def make(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
        centres = np.random.default_rng(1234).standard_normal((8, dim)) * 3
        rng = np.random.default_rng(seed)
        x = centres[rng.integers(0, 8, n)] + rng.standard_normal((n, dim))
        return x.astype(np.float32)

    return make


_WORDS = [
    "protein", "cell", "gene", "tumor", "receptor", "insulin", "mouse", "human", "virus",
    "vaccine", "neuron", "brain", "kinase", "pathway", "mutation", "therapy", "dose", "risk",
    "cohort", "trial", "plasma", "signal", "binding", "expression", "membrane", "enzyme",
    "lipid", "glucose", "cancer", "immune", "antibody", "infection", "liver", "kidney",
    "heart", "blood", "pressure", "oxygen", "stress", "aging",
]  # fmt: skip
_STOP = ["the", "of", "and", "in", "is", "a", "to", "with"]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """Seeded texts over a Zipf-ish vocabulary with stopwords, case and punctuation mixed in."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(_WORDS) + 1)
    p /= p.sum()
    texts = []
    for _ in range(n):
        words = list(rng.choice(_WORDS, size=int(rng.integers(3, 40)), p=p))
        words += list(rng.choice(_STOP, size=int(rng.integers(0, 6))))
        rng.shuffle(words)
        words = [w.upper() if rng.random() < 0.1 else w for w in words]
        texts.append(" ".join(words) + ".")
    return texts


QUERIES = [
    "insulin receptor signal",
    "The tumor of the brain",
    "aging",
    "gene gene expression",  # a repeated query token counts twice, as in bm25s and Lucene
    "kidney heart blood pressure oxygen stress",
    "Vaccine, infection & IMMUNE antibody!",
]


def assert_same_index(a: LexicalIndex, b: LexicalIndex) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.doc_len, b.doc_len)
    assert a.vocab == b.vocab
    assert a.tf.shape == b.tf.shape
    np.testing.assert_array_equal(a.tf.indptr, b.tf.indptr)
    np.testing.assert_array_equal(a.tf.indices, b.tf.indices)
    np.testing.assert_array_equal(a.tf.data, b.tf.data)
