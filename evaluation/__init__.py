"""IR and CTR evaluation (filled in by the evaluation harness issue)."""

__all__: list[str] = []
