from __future__ import annotations

import logging

import pytest

import indexer
from core.errors import InvalidIndexSpec
from indexer.policy import FRESH_SEGMENT_SPEC, RETIRED_GRACE_S, compaction_spec


def test_policy_constants() -> None:
    assert FRESH_SEGMENT_SPEC == "Flat"
    assert RETIRED_GRACE_S == 600
    assert indexer.FRESH_SEGMENT_SPEC == FRESH_SEGMENT_SPEC
    assert indexer.compaction_spec is compaction_spec


def test_compaction_spec_falls_back_to_flat(caplog: pytest.LogCaptureFixture) -> None:
    assert compaction_spec("IVF16,Flat", 16, 32) == "IVF16,Flat"
    assert compaction_spec("HNSW16", 1, 32) == "HNSW16"  # needs no training
    with caplog.at_level(logging.WARNING, logger="indexer.policy"):
        assert compaction_spec("IVF16,Flat", 15, 32, collection="docs") == "Flat"
    assert "too few to train 'IVF16,Flat' (needs 16)" in caplog.text
    assert "docs" in caplog.text
    with pytest.raises(InvalidIndexSpec):
        compaction_spec("NotASpec", 100, 32)
