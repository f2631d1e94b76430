"""BM25 over segments: a per-segment term-count matrix scored with collection-wide statistics.

Each segment holds a :class:`LexicalIndex` next to its FAISS index (``lexical.npz`` and
``lexical_vocab.json``), keyed by the same ids, so ingest, tombstones and compaction keep
both in step. A segment stores raw term counts, not BM25 weights: the weights depend on
collection-wide statistics (document count, document frequencies, average length) that
change with every segment, so :func:`search_lexical` computes them at query time over all
segments, as Lucene does across its segments. Results therefore equal a single BM25 index
over the union of the segments' live documents.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import scipy.sparse as sp

from core.errors import InvalidRequest, SegmentCorrupt
from core.models import DEFAULT_BM25_B, DEFAULT_BM25_K1
from indexer.integrity import file_checksum, write_hashed
from indexer.spec import as_id_set

logger = logging.getLogger(__name__)

LEXICAL_FILE = "lexical.npz"
LEXICAL_VOCAB_FILE = "lexical_vocab.json"
LEXICAL_FORMAT_VERSION = 1
# Names the tokenisation below. Segments record it: a query must be tokenised the way the
# segment's documents were, so a segment written by another analyzer is refused, not misread.
ANALYZER = "bm25s-regex-lower-stop_en-v1"

# A collection's own parameters (``Collection.bm25_k1``/``bm25_b``) are passed at query time;
# these defaults are the ones a collection gets when created without them.
DEFAULT_K1 = DEFAULT_BM25_K1
DEFAULT_B = DEFAULT_BM25_B

__all__ = [
    "ANALYZER",
    "LEXICAL_FILE",
    "LEXICAL_VOCAB_FILE",
    "LexicalIndex",
    "build_lexical",
    "load_lexical",
    "merge_lexical",
    "search_lexical",
    "tokenize",
]


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Tokenise ``texts`` for BM25: lowercase, ``\\w\\w+`` words, English stopwords removed.

    This is bm25s's tokeniser (scikit-learn's ``CountVectorizer`` pattern) without stemming,
    which on BEIR SciFact lands nearest the published BM25 numbers. Deterministic; an empty
    or stopword-only text gives an empty list.
    """
    if isinstance(texts, str):
        raise InvalidRequest("tokenize() takes a sequence of texts, not a single string")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InvalidRequest(f"texts[{bad}] is a {type(texts[bad]).__name__}, not a string")
    if not texts:
        return []
    tokens = bm25s.tokenize(
        texts, lower=True, stopwords="en", return_ids=False, show_progress=False
    )
    return [list(doc) for doc in tokens]


@dataclass(eq=False)  # identity semantics: fields are numpy arrays and a sparse matrix
class LexicalIndex:
    """Term counts of one segment's documents.

    ``ids`` (n,) int64 are the document (vector) ids, the same as the FAISS index's; ``tf``
    is an (n, len(vocab)) CSR matrix of term counts with sorted column indices; ``vocab``
    maps a term to its column, columns in sorted term order (so equal content gives equal
    indexes); ``doc_len`` (n,) int32 is each document's token count.
    """

    ids: np.ndarray
    tf: sp.csr_matrix
    vocab: dict[str, int]
    doc_len: np.ndarray
    # Derived for search, built on first use: column-major postings and document frequencies.
    _csc: sp.csc_matrix | None = field(default=None, init=False, repr=False)
    _df: np.ndarray | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.ids.shape[0] if self.ids.ndim == 1 else -1
        if n < 0 or self.tf.shape != (n, len(self.vocab)) or self.doc_len.shape != (n,):
            raise SegmentCorrupt(
                f"Inconsistent lexical index: ids {self.ids.shape}, tf {self.tf.shape}, "
                f"vocab {len(self.vocab)} terms, doc_len {self.doc_len.shape}"
            )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def terms(self) -> list[str]:
        """The vocabulary in column order."""
        return sorted(self.vocab, key=self.vocab.__getitem__)

    def postings(self) -> tuple[sp.csc_matrix, np.ndarray]:
        """``(tf as CSC, df per column)``, computed once and kept on the object."""
        if self._csc is None or self._df is None:
            with self._lock:
                if self._csc is None or self._df is None:
                    csc = self.tf.tocsc()
                    csc.sort_indices()
                    self._df = np.diff(csc.indptr).astype(np.int64)
                    self._csc = csc
        return self._csc, self._df

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``lexical.npz`` and ``lexical_vocab.json`` into ``directory``, fsync'ed.

        Returns their checksums (``{file name: "sha256:<hex>"}``, see :mod:`indexer.integrity`).
        """
        directory = Path(directory)
        tf = self.tf
        npz_path = directory / LEXICAL_FILE
        with open(npz_path, "wb") as f:
            # A zip file seeks back to patch its headers, so it is hashed once written.
            np.savez(
                f,
                ids=self.ids.astype(np.int64, copy=False),
                doc_len=self.doc_len.astype(np.int32, copy=False),
                data=tf.data.astype(np.int32, copy=False),
                indices=tf.indices.astype(np.int32, copy=False),
                indptr=tf.indptr.astype(np.int64, copy=False),
            )
            f.flush()
            os.fsync(f.fileno())
        vocab_doc = {
            "format_version": LEXICAL_FORMAT_VERSION,
            "analyzer": ANALYZER,
            "n_docs": len(self),
            "terms": self.terms,
        }
        vocab_bytes = json.dumps(vocab_doc, ensure_ascii=False, separators=(",", ":")).encode()
        return {
            LEXICAL_FILE: file_checksum(npz_path),
            LEXICAL_VOCAB_FILE: write_hashed(
                directory / LEXICAL_VOCAB_FILE, lambda w: w.write(vocab_bytes)
            ),
        }


def _csr(
    data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    return sp.csr_matrix(
        (data.astype(np.int32, copy=False), indices, indptr), shape=shape, dtype=np.int32
    )


def _as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.shape != (n,) or not (n == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidRequest(f"ids must be a 1-D array of {n} integer ids, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    if np.unique(arr).size != n:
        raise InvalidRequest("ids must be unique")
    return arr


def build_lexical(texts: Sequence[str], ids: np.ndarray) -> LexicalIndex:
    """Tokenise ``texts`` and count terms; ``ids[i]`` is the id of ``texts[i]``."""
    tokens = tokenize(texts)
    ids = _as_ids(ids, len(tokens))
    terms = sorted({t for doc in tokens for t in doc})
    vocab = {t: i for i, t in enumerate(terms)}
    doc_len = np.fromiter((len(doc) for doc in tokens), dtype=np.int64, count=len(tokens))
    indptr = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(doc_len, out=indptr[1:])
    cols = np.fromiter((vocab[t] for doc in tokens for t in doc), dtype=np.int32, count=indptr[-1])
    ones = np.ones(cols.shape[0], dtype=np.int32)
    # One entry per token; sum_duplicates turns them into counts with sorted columns.
    tf = _csr(ones, cols, indptr, (len(tokens), len(vocab)))
    tf.sum_duplicates()
    return LexicalIndex(ids=ids, tf=tf, vocab=vocab, doc_len=doc_len.astype(np.int32))


def load_lexical(directory: Path) -> LexicalIndex | None:
    """The lexical index stored in ``directory``; ``None`` if it has none (older segments).

    Raises :class:`SegmentCorrupt` if the files are incomplete, truncated, inconsistent or
    were written by another analyzer or format version.
    """
    directory = Path(directory)
    npz_path, vocab_path = directory / LEXICAL_FILE, directory / LEXICAL_VOCAB_FILE
    if not npz_path.exists() and not vocab_path.exists():
        return None
    name = directory.name
    try:
        with open(vocab_path, encoding="utf-8") as f:
            vocab_doc: Any = json.load(f)
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("ids", "doc_len", "data", "indices", "indptr")}
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        MemoryError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise SegmentCorrupt(
            f"Segment {name!r} has an unreadable lexical index ({type(exc).__name__})"
        ) from exc
    if not isinstance(vocab_doc, dict):
        raise SegmentCorrupt(f"Segment {name!r} has an unreadable lexical index (bad vocabulary)")
    if vocab_doc.get("format_version") != LEXICAL_FORMAT_VERSION:
        raise SegmentCorrupt(
            f"Segment {name!r} has lexical format version {vocab_doc.get('format_version')!r}; "
            f"this Quarry reads version {LEXICAL_FORMAT_VERSION}"
        )
    if vocab_doc.get("analyzer") != ANALYZER:
        raise SegmentCorrupt(
            f"Segment {name!r} was tokenised by analyzer {vocab_doc.get('analyzer')!r}, but "
            f"this Quarry tokenises queries with {ANALYZER!r}; re-index the collection"
        )
    terms = vocab_doc.get("terms")
    ids, indptr, doc_len = arrays["ids"], arrays["indptr"], arrays["doc_len"]
    if (
        not isinstance(terms, list)
        or not all(isinstance(t, str) for t in terms)
        or len(set(terms)) != len(terms)
        or ids.ndim != 1
        or not np.issubdtype(ids.dtype, np.integer)
        or doc_len.shape != ids.shape
        or not np.issubdtype(doc_len.dtype, np.integer)
        or indptr.shape != (ids.shape[0] + 1,)
        or vocab_doc.get("n_docs") != ids.shape[0]
        or np.unique(ids).size != ids.size
    ):
        raise SegmentCorrupt(f"Segment {name!r} has an inconsistent lexical index")
    try:
        tf = _csr(arrays["data"], arrays["indices"], indptr, (ids.shape[0], len(terms)))
        tf.check_format(full_check=True)
    except (ValueError, TypeError, IndexError) as exc:
        raise SegmentCorrupt(f"Segment {name!r} has a corrupt lexical index: {exc}") from exc
    return LexicalIndex(
        ids=ids.astype(np.int64, copy=False),
        tf=tf,
        vocab={t: i for i, t in enumerate(terms)},
        doc_len=doc_len.astype(np.int32, copy=False),
    )


def merge_lexical(indexes: Sequence[LexicalIndex], drop_ids: np.ndarray) -> LexicalIndex:
    """Concatenate ``indexes`` in order, leaving out the rows of ``drop_ids`` (compaction).

    The vocabulary becomes the sorted union of the terms that kept rows still use, so the
    result equals :func:`build_lexical` over the kept documents' texts. Raises
    :class:`SegmentCorrupt` if two indexes share an id.
    """
    if not indexes:
        raise InvalidRequest("merge_lexical needs at least one lexical index")
    drop = np.asarray(drop_ids)
    if drop.ndim != 1 or not (drop.size == 0 or np.issubdtype(drop.dtype, np.integer)):
        raise InvalidRequest(f"drop_ids must be a 1-D array of integer ids, got shape {drop.shape}")
    drop = drop.astype(np.int64, copy=False)
    kept: list[tuple[LexicalIndex, np.ndarray, sp.csr_matrix, list[str]]] = []
    used_terms: set[str] = set()
    for index in indexes:
        keep = ~np.isin(index.ids, drop)
        tf = index.tf[keep] if not keep.all() else index.tf
        terms = index.terms
        used_terms.update(terms[c] for c in np.unique(tf.indices))
        kept.append((index, keep, tf, terms))
    all_ids = np.concatenate([index.ids[keep] for index, keep, _, _ in kept])
    if np.unique(all_ids).size != all_ids.size:
        raise SegmentCorrupt("Cannot merge lexical indexes that hold the same id more than once")

    merged_terms = sorted(used_terms)
    vocab = {t: i for i, t in enumerate(merged_terms)}
    blocks: list[sp.csr_matrix] = []
    for _, _, tf, terms in kept:
        # Both vocabularies are sorted, so the remap is monotone and keeps columns sorted.
        remap = np.array([vocab.get(t, -1) for t in terms], dtype=np.int32)
        blocks.append(_csr(tf.data, remap[tf.indices], tf.indptr, (tf.shape[0], len(vocab))))
    tf_all = sp.vstack(blocks, format="csr", dtype=np.int32)
    tf_all.sort_indices()  # a no-op unless an input had unsorted columns
    doc_len = np.concatenate([index.doc_len[keep] for index, keep, _, _ in kept]).astype(np.int32)
    logger.info(
        "Merged %d lexical indexes: %d docs kept, %d dropped, %d terms",
        len(indexes),
        all_ids.size,
        sum(len(index) for index in indexes) - all_ids.size,
        len(vocab),
    )
    return LexicalIndex(ids=all_ids, tf=tf_all, vocab=vocab, doc_len=doc_len)


@dataclass
class _Hits:
    """One segment's postings for the query terms, with the rows still searchable."""

    index: LexicalIndex
    rows: np.ndarray  # document row of each posting
    term: np.ndarray  # query-term position of each posting
    tf: np.ndarray  # term count of each posting
    live: np.ndarray | None  # (n,) bool, False for excluded rows; None: all live


def search_lexical(
    indexes: Sequence[LexicalIndex],
    query: str,
    k: int,
    *,
    exclude_ids: np.ndarray | None = None,
    allow_ids: np.ndarray | None = None,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
) -> tuple[np.ndarray, np.ndarray]:
    """BM25 top-``k`` of ``query`` over all ``indexes``, with collection-wide statistics.

    Returns ``(scores (m,) float32, ids (m,) int64)``, best first, ties by ascending id,
    ``m <= k``: only documents sharing a term with the query are returned, with no ``-1``
    padding. The score of document ``d`` is
    ``sum over query tokens t of idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))``
    with ``idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))`` (Lucene's BM25; a token repeated
    in the query counts each time). ``N``, ``df`` and ``avgdl`` are summed over all indexes
    and leave out ``exclude_ids`` (tombstones): a deleted document no longer counts, so
    scores equal a BM25 index over the live documents alone. ``allow_ids`` is a filter: it
    restricts which documents are returned, not the statistics.
    """
    if not isinstance(query, str):
        raise InvalidRequest(f"query must be a string, got {type(query).__name__}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidRequest(f"k must be a positive integer, got {k!r}")
    if not (np.isfinite(k1) and k1 >= 0):
        raise InvalidRequest(f"k1 must be a non-negative number, got {k1!r}")
    if not (np.isfinite(b) and 0 <= b <= 1):
        raise InvalidRequest(f"b must be between 0 and 1, got {b!r}")
    exclude = as_id_set(exclude_ids, "exclude_ids")
    allow = as_id_set(allow_ids, "allow_ids")
    if exclude is not None and exclude.size == 0:
        exclude = None
    empty = np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    counts = Counter(tokenize([query])[0])
    if not counts or (allow is not None and allow.size == 0):
        return empty
    terms = list(counts)
    weights = np.array([counts[t] for t in terms], dtype=np.float64)

    # Pass 1: postings of the query terms per index, and the global statistics.
    n_docs, total_len = 0, 0
    df = np.zeros(len(terms), dtype=np.int64)
    hits: list[_Hits] = []
    for index in indexes:
        csc, index_df = index.postings()
        live = None if exclude is None else ~np.isin(index.ids, exclude)
        if live is None or live.all():
            live = None
            n_docs += len(index)
            total_len += int(index.doc_len.sum(dtype=np.int64))
        else:
            n_docs += int(live.sum())
            total_len += int(index.doc_len[live].sum(dtype=np.int64))
        found = [(q, col) for q, t in enumerate(terms) if (col := index.vocab.get(t)) is not None]
        if not found:
            continue
        qpos = np.array([q for q, _ in found], dtype=np.int64)
        cols = np.array([col for _, col in found], dtype=np.int64)
        starts, ends = csc.indptr[cols], csc.indptr[cols + 1]
        lengths = ends - starts
        # Flat positions of every posting of the selected columns, without a Python loop.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        flat = np.arange(int(lengths.sum()), dtype=np.int64) + offsets
        rows = csc.indices[flat].astype(np.int64, copy=False)
        term = np.repeat(qpos, lengths)
        if live is None:
            df[qpos] += index_df[cols]
        else:
            df += np.bincount(term[live[rows]], minlength=len(terms))
        hits.append(_Hits(index, rows, term, csc.data[flat].astype(np.float64), live))
    if n_docs == 0 or not hits:
        return empty

    # Pass 2: score the postings with the global statistics, then filter and merge.
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    avgdl = total_len / n_docs
    term_weight = weights * idf
    all_scores: list[np.ndarray] = []
    all_ids: list[np.ndarray] = []
    for h in hits:
        n = len(h.index)
        dl = h.index.doc_len[h.rows].astype(np.float64)
        norm = k1 * (1.0 - b + b * dl / avgdl) if avgdl > 0 else np.full_like(dl, k1)
        contrib = term_weight[h.term] * h.tf / (h.tf + norm)
        scores = np.bincount(h.rows, weights=contrib, minlength=n)
        matched = np.zeros(n, dtype=bool)
        matched[h.rows] = True
        if h.live is not None:
            matched &= h.live
        if allow is not None:
            matched &= np.isin(h.index.ids, allow)
        rows = np.flatnonzero(matched)
        all_scores.append(scores[rows])
        all_ids.append(h.index.ids[rows])
    scores = np.concatenate(all_scores)
    ids = np.concatenate(all_ids)
    if scores.size > k:
        # Keep every candidate tied with the k-th score so the id tie-break stays exact.
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        keep = scores >= kth
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))[:k]
    return scores[order].astype(np.float32), ids[order]
