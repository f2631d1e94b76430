"""Rankers: text rerankers (:mod:`ranker.text`) and, next, CTR models (``ranker.ctr``)."""

__all__: list[str] = []
