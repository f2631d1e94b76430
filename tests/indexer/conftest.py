"""Shared fixtures for indexer tests: seeded synthetic vectors, no downloads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

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
