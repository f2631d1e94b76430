"""Bearer API keys with scopes and optional per-collection grants.

Keys come from ``QUARRY_API_KEYS`` (every scope, every collection) and from the ``api_keys``
table (only the SHA-256 is stored; ``quarry keys create`` prints a new key once).

Auth **fails closed**. ``QUARRY_AUTH__MODE``:

- ``on``: every keyed route needs a valid key, even while no key exists;
- ``auto`` (the default): open only while no key was ever configured — once a key exists
  (a static one or a database row, revoked ones included) auth is on for good, so revoking
  the last key leaves a server that refuses every keyed route rather than an open one;
- ``off``: open, whatever keys exist; refused when ``QUARRY_ENV=prod``.

Lookups are cached for ``QUARRY_AUTH__CACHE_S`` (at most one second), so a revocation is
seen by every API process within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.collections import validate_name
from core.db import session_scope
from core.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from core.models import ApiKey, utcnow
from core.settings import Settings

logger = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
NAME_MAX = 128  # api_keys.name is a VARCHAR(128)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _digest(authorization: str | None) -> str:
    """The hash of a ``Bearer <key>`` header's key; :class:`Unauthorized` without one."""
    if not authorization or authorization[:7].lower() != "bearer ":
        raise Unauthorized("Missing bearer API key (Authorization: Bearer <key>)")
    key = authorization[7:].strip()
    if not key:
        raise Unauthorized("Missing bearer API key (Authorization: Bearer <key>)")
    return hash_key(key)


def new_key() -> str:
    return "qry_" + secrets.token_urlsafe(32)


def parse_scopes(scopes: str) -> set[str]:
    parsed = {s.strip() for s in scopes.split(",") if s.strip()}
    bad = parsed - set(SCOPES)
    if bad:
        raise InvalidRequest(f"Unknown scopes {sorted(bad)}. Valid scopes: {', '.join(SCOPES)}")
    if not parsed:
        raise InvalidRequest(f"A key needs at least one scope: {', '.join(SCOPES)}")
    return parsed


@dataclass(frozen=True)
class Grant:
    """What one key may do: its scopes and, when restricted, its collections."""

    scopes: frozenset[str]
    collections: frozenset[str] | None  # None: every collection

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def covers(self, collection: str | None) -> bool:
        """Whether the key reaches ``collection``. A restricted key reaches no unnamed one (a
        job whose collection is unknown, say): only an unrestricted key does."""
        return self.collections is None or (
            collection is not None and collection in self.collections
        )

    def allows(self, scope: str, collection: str | None) -> bool:
        """``scope`` on ``collection``; ``None`` for a route that names no collection."""
        return self.has_scope(scope) and (collection is None or self.covers(collection))

    def require(self, scope: str, collection: str | None = None) -> None:
        """Raise :class:`Forbidden` unless :meth:`allows`."""
        if not self.has_scope(scope):
            raise Forbidden(f"This API key lacks the {scope!r} scope")
        if collection is not None:
            self.require_collection(collection)

    def require_collection(self, collection: str | None) -> None:
        """Raise :class:`Forbidden` unless the key :meth:`covers` ``collection``."""
        if not self.covers(collection):
            raise Forbidden(f"This API key has no access to collection {collection!r}")


#: The grant of a static key, and of every caller while auth is off.
FULL = Grant(frozenset(SCOPES), None)


class KeyStore:
    """Checks bearer keys against the static list and the ``api_keys`` table."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._static = {hash_key(k) for k in settings.api_keys if k}
        self._mode = settings.auth.mode
        self._ttl = settings.auth.cache_s
        self._sessions = sessions
        self._grants: dict[str, tuple[float, Grant | None]] = {}
        self._enabled: tuple[float, bool] = (-1e9, False)
        self._lock = threading.Lock()
        if self._mode == "off":
            logger.warning("QUARRY_AUTH__MODE=off: every route is open, API keys are ignored")

    def enabled(self) -> bool:
        """Whether keys are required now (see the module docstring for the modes)."""
        known = self._enabled_cached()
        if known is not None:
            return known
        now = time.monotonic()  # taken before the query: an answer is never older than ttl
        with session_scope(self._sessions) as s:
            value = bool(s.scalar(select(exists().where(ApiKey.id.is_not(None)))))
        with self._lock:
            self._enabled = (now, value)
        return value

    def _enabled_cached(self) -> bool | None:
        """:meth:`enabled` where it is known without a query (None: ask the database)."""
        if self._mode == "off":
            return False
        if self._mode == "on" or self._static:
            return True
        now = time.monotonic()
        with self._lock:
            at, value = self._enabled
        if value:  # once on, on for good in this process
            return True
        if now - at <= self._ttl:
            return value
        return None

    def active_keys(self) -> int:
        """Keys that can authenticate now (static plus unrevoked database keys)."""
        with session_scope(self._sessions) as s:
            rows = s.scalars(select(ApiKey.id).where(ApiKey.revoked.is_(False))).all()
        return len(self._static) + len(rows)

    def _grant(self, digest: str) -> Grant | None:
        cached = self._grant_cached(digest)
        if cached is not None:
            return cached[0]
        now = time.monotonic()
        with session_scope(self._sessions) as s:
            row = s.execute(
                select(ApiKey.scopes, ApiKey.collections).where(
                    ApiKey.key_hash == digest, ApiKey.revoked.is_(False)
                )
            ).first()
        grant = None if row is None else _row_grant(row.scopes, row.collections)
        with self._lock:
            if len(self._grants) > 10_000:  # unknown keys must not grow the cache forever
                self._grants.clear()
            self._grants[digest] = (now, grant)
        return grant

    def _grant_cached(self, digest: str) -> tuple[Grant | None] | None:
        """``(grant,)`` when the cache answers (``(None,)``: unknown or revoked), else None."""
        now = time.monotonic()
        with self._lock:
            cached = self._grants.get(digest)
        if cached is not None and now - cached[0] <= self._ttl:
            return (cached[1],)
        return None

    def authenticate(self, authorization: str | None) -> Grant:
        """The caller's grant (:data:`FULL` while auth is off); raise :class:`Unauthorized`
        for a missing, unknown or revoked key."""
        grant = self._authenticate(authorization, database=True)
        assert grant is not None  # with the database, every question has an answer
        return grant

    def authenticate_cached(self, authorization: str | None) -> Grant | None:
        """:meth:`authenticate` without a database query, for callers on an event loop: the
        grant when auth is off, the key is a static one or the answer is cached
        (``QUARRY_AUTH__CACHE_S``), raising as :meth:`authenticate` does; None when only the
        database can answer (then call :meth:`authenticate` on a worker thread)."""
        return self._authenticate(authorization, database=False)

    def _authenticate(self, authorization: str | None, *, database: bool) -> Grant | None:
        enabled = self.enabled() if database else self._enabled_cached()
        if enabled is None:
            return None
        if not enabled:
            return FULL
        digest = _digest(authorization)
        if any(hmac.compare_digest(digest, h) for h in self._static):
            return FULL
        if database:
            grant = self._grant(digest)
        else:
            cached = self._grant_cached(digest)
            if cached is None:
                return None
            grant = cached[0]
        if grant is None:
            raise Unauthorized("Invalid or revoked API key")
        return grant

    def check(self, authorization: str | None, scope: str, collection: str | None = None) -> Grant:
        """Raise unless auth is off or the bearer key grants ``scope`` on ``collection``
        (``None``: a route that names no collection). Returns the key's grant."""
        grant = self.authenticate(authorization)
        grant.require(scope, collection)
        return grant

    def check_cached(
        self, authorization: str | None, scope: str, collection: str | None = None
    ) -> Grant | None:
        """:meth:`check` without a database query (:meth:`authenticate_cached`); None when
        only the database can answer."""
        grant = self.authenticate_cached(authorization)
        if grant is not None:
            grant.require(scope, collection)
        return grant


def _row_grant(scopes: str, collections: object) -> Grant:
    """A stored key's grant. Unknown scopes in a hand-edited row grant nothing (fail closed);
    so does a ``collections`` value that is not a list of names."""
    known = frozenset(s.strip() for s in (scopes or "").split(",")) & frozenset(SCOPES)
    if collections is None:
        return Grant(known, None)
    if not isinstance(collections, list):
        return Grant(known, frozenset())
    return Grant(known, frozenset(c for c in collections if isinstance(c, str)))


def create_key(
    session: Session,
    name: str,
    scopes: str = "read,write",
    collections: Sequence[str] | None = None,
) -> str:
    """Store a new key and return it (the only time it is visible).

    ``collections``: the only collections the key may reach (``None``: every collection).
    """
    if not name or name != name.strip() or len(name) > NAME_MAX:
        raise InvalidRequest(
            f"Invalid API key name {name!r}: use 1-{NAME_MAX} characters, no surrounding spaces"
        )
    parsed = parse_scopes(scopes)
    grants: list[str] | None = None
    if collections is not None:
        if isinstance(collections, str):  # a bare name would be read as its letters
            collections = [collections]
        if not collections:
            raise InvalidRequest(
                "An empty collection list would grant no collection; name at least one, or "
                "none at all for every collection"
            )
        for coll in collections:
            validate_name(coll)
        grants = list(dict.fromkeys(collections))
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise InvalidRequest(f"An API key named {name!r} exists already")
    key = new_key()
    session.add(
        ApiKey(
            name=name,
            key_hash=hash_key(key),
            scopes=",".join(s for s in SCOPES if s in parsed),
            revoked=False,
            collections=grants,
        )
    )
    session.flush()
    return key


def revoke_key(session: Session, name: str) -> None:
    """Revoke a key by name; every API process refuses it within ``auth.cache_s``."""
    res = session.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked.is_(False))
        .values(revoked=True, revoked_at=utcnow())
    )
    if not getattr(res, "rowcount", 0):
        raise NotFound(f"No active API key named {name!r}")


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))
