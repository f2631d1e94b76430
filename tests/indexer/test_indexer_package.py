from __future__ import annotations

import importlib

import pytest


def test_public_api_is_importable() -> None:
    indexer = importlib.import_module("indexer")
    if getattr(indexer, "__file__", None) is None:
        pytest.skip(
            "indexer is imported as a namespace package: the editable install predates "
            "indexer/__init__.py; re-run `pip install -e .`"
        )
    for name in indexer.__all__:
        assert getattr(indexer, name) is not None, name
