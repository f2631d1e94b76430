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


class InvalidIndexSpec(InvalidRequest):
    """A FAISS factory string that cannot be built (a client error: fix the request).

    The code stays ``index_error``, the one clients have seen since v0.1.
    """

    code = "index_error"
    status = 422


class SegmentCorrupt(QuarryError):
    """A segment's files are unreadable, truncated or fail their checksum (a server fault).

    ``details`` names the collection and the segment; the operator repairs it with
    ``quarry verify --repair``.
    """

    code = "segment_corrupt"
    status = 500


class DatabaseNotMigrated(QuarryError):
    code = "database_not_migrated"
    status = 503


class ServiceUnavailable(QuarryError):
    code = "service_unavailable"
    status = 503


class BrokerUnavailable(ServiceUnavailable):
    """The task broker could not take a job in time; the job is left for the reaper."""

    code = "broker_unavailable"


class CTRModelNotFound(NotFound):
    code = "ctr_model_not_found"


class CTRModelNotReady(ServiceUnavailable):
    """The name's first deployment is still encoding its users' histories."""

    code = "ctr_model_not_ready"


class CTRModelUnavailable(ServiceUnavailable):
    """A deployed model cannot be loaded (its files are gone or changed)."""

    code = "ctr_model_unavailable"


class UnknownItems(InvalidRequest):
    """Candidates the model's catalogue does not know (it cannot score them)."""

    code = "unknown_items"
