from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import pytest
import scipy.sparse as sp

from core.errors import InvalidRequest, SegmentCorrupt
from indexer.lexical import (
    LEXICAL_FILE,
    LEXICAL_VOCAB_FILE,
    LexicalIndex,
    build_lexical,
    load_lexical,
    merge_lexical,
    search_lexical,
    tokenize,
)
from tests.indexer.conftest import QUERIES, assert_same_index, make_corpus


def _split(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _segments(texts: Sequence[str], ids: np.ndarray, parts: int) -> list[LexicalIndex]:
    return [build_lexical(texts[s], ids[s]) for s in _split(len(texts), parts)]


def _kept(texts: Sequence[str], keep: np.ndarray) -> list[str]:
    return [t for t, k in zip(texts, keep, strict=True) if k]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], np.ndarray]:
    texts = make_corpus(300)
    texts[17] = ""  # empty and stopword-only documents still count in N and avgdl
    texts[42] = "the of and"
    ids = np.random.default_rng(5).permutation(10_000)[:300].astype(np.int64)
    return texts, ids


def test_tokenize_lowercases_and_drops_stopwords() -> None:
    assert tokenize(["The Insulin receptor, and a B-cell!", "", "of the"]) == [
        ["insulin", "receptor", "cell"],
        [],
        [],
    ]
    assert tokenize([]) == []
    texts = make_corpus(20)
    assert tokenize(texts) == tokenize(texts)
    with pytest.raises(InvalidRequest):
        tokenize("a single string")
    with pytest.raises(InvalidRequest):
        tokenize(["ok", 3])  # type: ignore[list-item]


def test_build_counts_terms() -> None:
    index = build_lexical(["Gene gene cell", "cell the", ""], np.array([7, 3, 9]))
    assert index.vocab == {"cell": 0, "gene": 1}
    assert isinstance(index.tf, sp.csr_matrix)
    np.testing.assert_array_equal(index.tf.toarray(), [[1, 2], [1, 0], [0, 0]])
    np.testing.assert_array_equal(index.doc_len, [3, 1, 0])
    assert index.ids.dtype == np.int64 and len(index) == 3
    with pytest.raises(InvalidRequest, match="unique"):
        build_lexical(["a b", "c d"], np.array([1, 1]))
    with pytest.raises(InvalidRequest):
        build_lexical(["a b"], np.array([1, 2]))


def test_single_segment_matches_bm25s_lucene(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    index = build_lexical(texts, ids)
    reference = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    reference.index(tokenize(texts), show_progress=False)
    for query in QUERIES:
        expected = reference.get_scores(tokenize([query])[0])
        scores, found = search_lexical([index], query, len(texts))
        got = np.zeros(len(texts))
        got[_positions(ids, found)] = scores
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=query)
        assert len(found) == int((expected > 0).sum())  # every matching doc, no padding
        assert np.all(np.diff(scores) <= 0)


def _positions(ids: np.ndarray, found: np.ndarray) -> np.ndarray:
    where = {int(d): i for i, d in enumerate(ids)}
    return np.array([where[int(d)] for d in found], dtype=np.int64)


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_segments_equal_one_index(corpus: tuple[list[str], np.ndarray], parts: int) -> None:
    texts, ids = corpus
    whole = [build_lexical(texts, ids)]
    split = _segments(texts, ids, parts)
    for query in QUERIES:
        for k in (1, 10, 300):
            s1, i1 = search_lexical(whole, query, k)
            s2, i2 = search_lexical(split, query, k)
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_array_equal(s1, s2)


def test_merge_equals_build_on_kept_texts(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    drop = np.concatenate([ids[::4], [999_999]])  # an id in no index is harmless
    merged = merge_lexical(_segments(texts, ids, 3), drop)
    keep = ~np.isin(ids, drop)
    assert_same_index(merged, build_lexical(_kept(texts, keep), ids[keep]))
    assert_same_index(
        merge_lexical(_segments(texts, ids, 3), np.empty(0, np.int64)), build_lexical(texts, ids)
    )


def test_merge_drops_terms_only_dropped_docs_used() -> None:
    a = build_lexical(["insulin gene", "rare"], np.array([1, 2]))
    b = build_lexical(["gene cell"], np.array([3]))
    merged = merge_lexical([a, b], np.array([2]))
    assert merged.vocab == {"cell": 0, "gene": 1, "insulin": 2}
    with pytest.raises(SegmentCorrupt, match="same id"):
        merge_lexical([a, a], np.empty(0, np.int64))
    with pytest.raises(InvalidRequest):
        merge_lexical([], np.empty(0, np.int64))
    everything = merge_lexical([a, b], np.array([1, 2, 3]))
    assert len(everything) == 0 and everything.vocab == {}
    assert search_lexical([everything], "gene", 5)[1].size == 0


def test_tombstones_leave_results_and_statistics(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    drop = ids[::3]
    keep = ~np.isin(ids, drop)
    live_only = [build_lexical(_kept(texts, keep), ids[keep])]
    split = _segments(texts, ids, 3)
    for query in QUERIES:
        scores, found = search_lexical(split, query, 50, exclude_ids=drop)
        assert not np.isin(found, drop).any()
        ref_scores, ref_found = search_lexical(live_only, query, 50)
        np.testing.assert_array_equal(found, ref_found)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    # An empty tombstone list is no tombstones.
    a = search_lexical(split, QUERIES[0], 10, exclude_ids=np.empty(0, np.int64))
    b = search_lexical(split, QUERIES[0], 10)
    np.testing.assert_array_equal(a[1], b[1])


def test_allow_list_filters_results_not_statistics(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    split = _segments(texts, ids, 3)
    allow = ids[1::2]
    for query in QUERIES:
        all_scores, all_found = search_lexical(split, query, len(texts))
        scores, found = search_lexical(split, query, 20, allow_ids=allow)
        assert np.isin(found, allow).all()
        expected = np.isin(all_found, allow)
        np.testing.assert_array_equal(found, all_found[expected][:20])
        np.testing.assert_array_equal(scores, all_scores[expected][:20])
    scores, found = search_lexical(split, "insulin", 10, allow_ids=np.empty(0, np.int64))
    assert found.size == 0 and scores.size == 0
    both = search_lexical(split, "gene", 300, allow_ids=allow, exclude_ids=allow[:10])[1]
    assert np.isin(both, allow).all() and not np.isin(both, allow[:10]).any()


def test_ties_break_by_id_and_fewer_than_k() -> None:
    index = build_lexical(
        ["gene cell", "insulin", "gene cell", "gene cell"], np.array([9, 1, 4, 6])
    )
    scores, found = search_lexical([index], "gene", 10)
    np.testing.assert_array_equal(found, [4, 6, 9])
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert np.all(scores == scores[0])
    np.testing.assert_array_equal(search_lexical([index], "gene", 2)[1], [4, 6])


def test_queries_without_known_terms_return_nothing(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    split = _segments(texts, ids, 3)
    for query in ["", "the of and", "zebra quantum"]:
        scores, found = search_lexical(split, query, 10)
        assert scores.shape == (0,) and found.shape == (0,)
    assert search_lexical([], "gene", 10)[1].size == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"k": 0}, {"k": True}, {"k": 2.0}, {"k1": -1.0}, {"b": 1.5}, {"exclude_ids": np.ones((2, 2))}],
)
def test_search_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    index = build_lexical(["gene"], np.array([1]))
    args: dict[str, object] = {"k": 5, **kwargs}
    with pytest.raises(InvalidRequest):
        search_lexical([index], "gene", **args)  # type: ignore[arg-type]


def test_bm25_parameters_change_scores(corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    index = build_lexical(texts, ids)
    reference = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    reference.index(tokenize(texts), show_progress=False)
    scores, found = search_lexical([index], QUERIES[4], len(texts), k1=1.2, b=0.75)
    expected = reference.get_scores(tokenize([QUERIES[4]])[0])
    np.testing.assert_allclose(scores, expected[_positions(ids, found)], rtol=1e-4)


def test_bm25_parameters_by_hand(tmp_path: Path) -> None:
    """k1 and b apply at query time, on the stored counts, as BM25's formula says."""
    # Lengths 3, 2, 4 -> N 3, avgdl 3. "lava": df 2, idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)).
    texts = ["volcano lava volcano", "lava flow", "bread dough oven yeast"]
    index = build_lexical(texts, np.array([10, 20, 30]))
    idf = math.log(1 + 1.5 / 2.5)

    def by_hand(tf: int, dl: int, k1: float, b: float) -> float:
        return idf * tf / (tf + k1 * (1 - b + b * dl / 3))

    cases = [
        (0.9, 0.4),  # the defaults
        (1.2, 0.75),
        (2.0, 1.0),  # full length normalisation
        (1.2, 0.0),  # none: d10 and d20 tie, the id breaks it
        (0.0, 0.4),  # k1 = 0: term presence only, idf per matching term
    ]
    for k1, b in cases:
        args = {} if (k1, b) == (0.9, 0.4) else {"k1": k1, "b": b}
        scores, found = search_lexical([index], "lava", 10, **args)  # type: ignore[arg-type]
        got = dict(zip(found.tolist(), scores.tolist(), strict=True))
        # d20 "lava flow" (tf 1, length 2) is shorter than average, d10 (tf 1, 3) average.
        expected = {20: by_hand(1, 2, k1, b), 10: by_hand(1, 3, k1, b)}
        assert got == pytest.approx(expected, rel=1e-6), (k1, b)
        order = sorted(expected, key=lambda i: (-np.float32(expected[i]), i))
        assert found.tolist() == order
    # Worked for k1 1.2, b 0.75: d20 norm 1.2 * (0.25 + 0.75 * 2/3) = 0.9 -> idf / 1.9;
    # the defaults: 0.9 * (0.6 + 0.4 * 2/3) = 0.78 -> idf / 1.78.
    lucene = search_lexical([index], "lava", 1, k1=1.2, b=0.75)[0][0]
    assert lucene == pytest.approx(0.470004 / 1.9, rel=1e-5)
    assert search_lexical([index], "lava", 1)[0][0] == pytest.approx(0.470004 / 1.78, rel=1e-5)
    # tf saturates with k1: "volcano" twice in d10 (length 3 = avgdl, so norm = k1).
    idf_v = math.log(1 + 2.5 / 1.5)
    for k1 in (0.9, 1.2, 0.0):
        score = search_lexical([index], "volcano", 1, k1=k1, b=0.3)[0][0]
        assert score == pytest.approx(idf_v * 2 / (2 + k1), rel=1e-6)
    # Nothing on disk depends on k1/b: a saved and reloaded index scores the same.
    index.save(tmp_path)
    reloaded = load_lexical(tmp_path)
    assert reloaded is not None
    for k1, b in cases:
        a = search_lexical([index], "lava volcano", 3, k1=k1, b=b)
        c = search_lexical([reloaded], "lava volcano", 3, k1=k1, b=b)
        np.testing.assert_array_equal(a[0], c[0])
        np.testing.assert_array_equal(a[1], c[1])


def test_save_and_load_round_trip(tmp_path: Path, corpus: tuple[list[str], np.ndarray]) -> None:
    texts, ids = corpus
    index = build_lexical(texts, ids)
    assert load_lexical(tmp_path) is None  # no files: a segment written before BM25
    index.save(tmp_path)
    loaded = load_lexical(tmp_path)
    assert loaded is not None
    assert_same_index(loaded, index)
    for query in QUERIES:
        a, b = search_lexical([index], query, 10), search_lexical([loaded], query, 10)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_load_refuses_broken_or_foreign_files(tmp_path: Path) -> None:
    build_lexical(["gene cell", "insulin"], np.array([1, 2])).save(tmp_path)
    vocab_path = tmp_path / LEXICAL_VOCAB_FILE
    doc = json.loads(vocab_path.read_text(encoding="utf-8"))
    vocab_path.write_text(json.dumps({**doc, "analyzer": "other"}), encoding="utf-8")
    with pytest.raises(SegmentCorrupt, match="analyzer"):
        load_lexical(tmp_path)
    vocab_path.write_text(json.dumps({**doc, "terms": ["cell"]}), encoding="utf-8")
    with pytest.raises(SegmentCorrupt):
        load_lexical(tmp_path)
    vocab_path.unlink()
    with pytest.raises(SegmentCorrupt, match="unreadable"):
        load_lexical(tmp_path)
    (tmp_path / LEXICAL_FILE).unlink()
    assert load_lexical(tmp_path) is None
