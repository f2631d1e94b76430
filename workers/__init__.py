"""Background jobs: the Celery app, tasks, the in-process dispatcher and batch indexing."""

__all__: list[str] = []
