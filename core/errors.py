"""Domain errors. Core packages raise these; the API translates them once into JSON.

Each error carries a stable machine-readable ``code`` and the HTTP status it maps to.
Messages are written for humans and never contain stack traces or internal paths that
would leak secrets.
"""

from __future__ import annotations

from typing import Any


class QuarryError(Exception):
    """Base class of every error Quarry raises on purpose."""

    code: str = "quarry_error"
    status: int = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRequest(QuarryError):
    code = "invalid_request"
    status = 422


class NotFound(QuarryError):
    code = "not_found"
    status = 404


class CollectionNotFound(NotFound):
    code = "collection_not_found"


class DocumentNotFound(NotFound):
    code = "document_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class Conflict(QuarryError):
    code = "conflict"
    status = 409


class CollectionExists(Conflict):
    code = "collection_exists"


class PayloadTooLarge(QuarryError):
    code = "payload_too_large"
    status = 413


class Unauthorized(QuarryError):
    code = "unauthorized"
    status = 401


class Forbidden(QuarryError):
    code = "forbidden"
    status = 403


class ModelNotAvailable(QuarryError):
    """A model could not be resolved to local files. The message says what to install."""

    code = "model_not_available"
    status = 422


class IndexError_(QuarryError):
    """A FAISS index could not be built or read (bad factory string, too few vectors)."""

    code = "index_error"
    status = 422


class DatabaseNotMigrated(QuarryError):
    code = "database_not_migrated"
    status = 503


class ServiceUnavailable(QuarryError):
    code = "service_unavailable"
    status = 503
