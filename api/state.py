"""Everything the API process holds for its lifetime, built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from api.auth import KeyStore
from api.metrics import Metrics
from indexer.cache import SegmentCache
from indexer.searcher import Searcher
from workers.dispatch import Dispatcher
from workers.runtime import Runtime


@dataclass
class AppState:
    runtime: Runtime
    dispatcher: Dispatcher
    cache: SegmentCache
    searcher: Searcher
    metrics: Metrics
    keys: KeyStore
