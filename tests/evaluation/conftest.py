"""Fixtures of the evaluation tests: the hand-made BEIR and TREC sets under tests/fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def tiny_beir() -> Path:
    return FIXTURES / "tiny_beir"


@pytest.fixture
def tiny_trec() -> Path:
    return FIXTURES / "tiny_trec"
