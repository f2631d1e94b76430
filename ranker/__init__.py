"""Neural rerankers and CTR models (not built yet)."""

__all__: list[str] = []
