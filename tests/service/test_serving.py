"""Online model queues over the real MiniLM: batched embeddings equal unbatched ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.errors import InvalidRequest
from core.settings import ServingSettings
from service.serving import EmbedRequest, Serving, embed_merged, embed_now, estimate_tokens

TEXTS = [
    "what is the boundary layer in supersonic flow",
    "heat transfer",
    "an experimental study of the effect of wing sweep on the pressure distribution near the tip",
    "x",
    "buckling of thin cylindrical shells under axial compression and internal pressure",
]


class Pool:
    """The slice of EmbedderPool that Serving uses, over one loaded model."""

    def __init__(self, model: object) -> None:
        self.model = model
        self.gets = 0

    def get(self, name: str) -> object:
        self.gets += 1
        if name != "all-MiniLM-L6-v2":
            raise InvalidRequest(f"unknown model {name}")
        return self.model


def test_merged_requests_equal_each_request_alone(minilm) -> None:
    requests = [
        EmbedRequest(tuple(TEXTS[:2]), kind="query", normalize=True),
        EmbedRequest(tuple(TEXTS[2:]), kind="document", normalize=False),
        EmbedRequest((TEXTS[3],), kind="query", normalize=False, count=False),
    ]
    merged = embed_merged(minilm, requests)
    for request, got in zip(requests, merged, strict=True):
        alone = embed_now(minilm, request)
        assert got.vectors.shape == alone.vectors.shape
        np.testing.assert_allclose(got.vectors, alone.vectors, atol=2e-5)
        assert got.tokens == alone.tokens
    assert merged[2].tokens == 0
    assert merged[0].tokens == sum(minilm.count_tokens(TEXTS[:2]))
    assert np.allclose(np.linalg.norm(merged[0].vectors, axis=1), 1.0, atol=1e-5)


def test_concurrent_callers_get_their_own_embeddings(minilm) -> None:
    serving = Serving(ServingSettings(max_wait_ms=20), Pool(minilm), None)  # type: ignore[arg-type]
    expected = minilm.embed(TEXTS, kind="query")
    try:
        with ThreadPoolExecutor(16) as pool:
            jobs = [(i % len(TEXTS)) for i in range(80)]
            got = list(
                pool.map(
                    lambda i: serving.embed(
                        "all-MiniLM-L6-v2", EmbedRequest((TEXTS[i],), kind="query")
                    ),
                    jobs,
                )
            )
        for i, out in zip(jobs, got, strict=True):
            np.testing.assert_allclose(out.vectors[0], expected[i], atol=2e-5)
        assert all(h.ok for h in serving.health().values())
    finally:
        serving.close()


def test_unbatched_mode_calls_the_model_directly(minilm) -> None:
    serving = Serving(ServingSettings(batching=False), Pool(minilm), None)  # type: ignore[arg-type]
    out = serving.embed("all-MiniLM-L6-v2", EmbedRequest(("heat transfer",)))
    np.testing.assert_allclose(out.vectors, minilm.embed(["heat transfer"]), atol=1e-6)
    assert serving.health() == {}


def test_an_unknown_model_fails_before_any_queue_exists(minilm) -> None:
    serving = Serving(ServingSettings(), Pool(minilm), None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        serving.embed("nope", EmbedRequest(("a",)))
    assert serving.health() == {}


def test_token_estimate_is_capped_per_text() -> None:
    assert estimate_tokens(["abcd" * 10, "x"], 512) == 12 + 2
    assert estimate_tokens(["a" * 100_000], 256) == 256


class ManyReranker:
    """A reranker that scores by document length and records how it was called."""

    name = "fake"
    kind = "cross-encoder"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        self.calls.append(1)
        return np.asarray([len(query) + len(d) for d in documents], dtype=np.float32)

    def score_many(self, queries: list[str], groups: list[list[str]]) -> list[np.ndarray]:
        self.calls.append(len(queries))
        return [self.score(q, g) for q, g in zip(queries, groups, strict=True)]


def test_concurrent_rerank_requests_share_batches_and_get_their_own_scores() -> None:
    import threading

    reranker = ManyReranker()

    class RPool:
        def get(self, name: str) -> ManyReranker:
            return reranker

    # Hold every model call at a gate, so the requests queue up behind the first one whatever
    # order the threads arrive in (a lone request is scored with ``score``, a merged batch
    # with ``score_many``).
    gate = threading.Event()
    original_many, original_one = reranker.score_many, reranker.score

    def slow_many(queries: list[str], groups: list[list[str]]) -> list[np.ndarray]:
        gate.wait(5)
        return original_many(queries, groups)

    def slow_one(query: str, documents: list[str]) -> np.ndarray:
        gate.wait(5)
        return original_one(query, documents)

    reranker.score_many = slow_many  # type: ignore[method-assign]
    reranker.score = slow_one  # type: ignore[method-assign]
    serving = Serving(ServingSettings(workers=1), None, RPool())  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(serving.rerank, "fake", "q" * i, ["a", "bb", "c" * i]) for i in range(8)
            ]
            import time

            time.sleep(0.3)
            gate.set()
            for i, f in enumerate(futures):
                assert f.result(timeout=10).tolist() == [i + 1, i + 2, 2 * i]
        assert max(reranker.calls) > 1  # requests were merged into one score_many call
    finally:
        serving.close()


@pytest.mark.parametrize("batching", [True, False])
def test_async_rerank_gives_the_same_scores_from_the_event_loop(batching: bool) -> None:
    """``arerank`` (the /v1/rerank path): the first call loads the reranker on a thread, later
    ones await the queue from the loop; concurrent awaits are merged into one batch when
    batching is on, and each gets its own scores."""
    import asyncio
    import threading

    reranker = ManyReranker()
    loaded_on: list[str] = []

    class RPool:
        def get(self, name: str) -> ManyReranker:
            loaded_on.append(threading.current_thread().name)
            return reranker

    serving = Serving(
        ServingSettings(batching=batching, workers=1, max_wait_ms=50),
        None,  # type: ignore[arg-type]
        RPool(),  # type: ignore[arg-type]
    )

    async def main() -> list[list[float]]:
        first = await serving.arerank("fake", "q", ["a", "bb"])
        assert first.tolist() == [2, 3]
        assert loaded_on[0] != threading.current_thread().name  # loading ran on a thread
        calls = [serving.arerank("fake", "q" * i, ["a", "bb", "c" * i]) for i in range(1, 9)]
        return [s.tolist() for s in await asyncio.gather(*calls)]

    try:
        scores = asyncio.run(main())
        assert scores == [[i + 1, i + 2, 2 * i] for i in range(1, 9)]
        if batching:
            assert max(reranker.calls) > 1  # awaited requests were merged
    finally:
        serving.close()
