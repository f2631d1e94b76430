"""The application layer: one composition root and the use cases every entry point calls.

:func:`build` wires the objects once (database engine and sessions, embedder pool, segment
cache with the configured GPU placement, job dispatcher, key store, searcher); the API
routers, the ``quarry`` CLI, the Celery tasks, ``quarry eval`` and the service benchmarks
are thin adapters that parse their input, call one use case and format its output.

Use cases, one module each:

- :mod:`service.collections` — create, list, show, drop a collection
- :mod:`service.ingest` — store documents and queue the job that indexes them; batch indexing
- :mod:`service.documents` — get and delete documents
- :mod:`service.compact` — queue a compaction
- :mod:`service.search` — dense, lexical and hybrid search
- :mod:`service.embed` — embed texts with an allowed model
- :mod:`service.jobs` — the work behind each job kind, leases and the reaper
- :mod:`service.keys` — API keys
- :mod:`service.integrity` — verify and repair segments
- :mod:`service.training` — training data mined with Quarry's own engines
- :mod:`service.rerank` — rerank documents for a query (also the search ``rerank`` stage)
- :mod:`service.ctr` — CTR scoring, behaviour events and their encoding
"""

from __future__ import annotations

from service.container import Container, build

__all__ = ["Container", "build"]
