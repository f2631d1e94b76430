"""Bearer API keys with scopes and optional per-collection grants.

Keys come from ``QUARRY_API_KEYS`` (every scope, every collection) and from the ``api_keys``
table (only the SHA-256 is stored; ``quarry keys create`` prints a new key once).

Auth **fails closed**. ``QUARRY_AUTH__MODE``:

- ``on``: every keyed route needs a valid key, even while no key exists;
- ``auto`` (the default): open only while no key was ever configured — once a key exists
  (a static one or a database row, revoked ones included) auth is on for good, so revoking
  the last key leaves a server that refuses every keyed route rather than an open one;
- ``off``: open, refused when ``QUARRY_ENV=prod``.

Lookups are cached for ``QUARRY_AUTH__CACHE_S`` (at most one second), so a revocation is
seen by every API process within that time.
"""

from __future__ import annotations

import hashlib
import hmac
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

SCOPES = ("read", "write", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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

    def allows(self, scope: str, collection: str | None) -> bool:
        if scope not in self.scopes and "admin" not in self.scopes:
            return False
        return self.collections is None or collection is None or collection in self.collections


_ALL = Grant(frozenset(SCOPES), None)


class KeyStore:
    """Checks bearer keys against the static list and the ``api_keys`` table."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._static = {hash_key(k) for k in settings.api_keys}
        self._mode = settings.auth.mode
        self._ttl = settings.auth.cache_s
        self._sessions = sessions
        self._grants: dict[str, tuple[float, Grant | None]] = {}
        self._enabled: tuple[float, bool] = (-1e9, False)
        self._lock = threading.Lock()

    def enabled(self) -> bool:
        """Whether keys are required now (see the module docstring for the modes)."""
        if self._mode == "on" or self._static:
            return True
        if self._mode == "off":
            return False
        with self._lock:
            at, value = self._enabled
            if value:  # once on, on for good in this process
                return True
            if time.monotonic() - at <= self._ttl:
                return value
        with session_scope(self._sessions) as s:
            value = bool(s.scalar(select(exists().where(ApiKey.id.is_not(None)))))
        with self._lock:
            self._enabled = (time.monotonic(), value)
        return value

    def active_keys(self) -> int:
        """Keys that can authenticate now (static plus unrevoked database keys)."""
        with session_scope(self._sessions) as s:
            rows = s.scalars(select(ApiKey.id).where(ApiKey.revoked.is_(False))).all()
        return len(self._static) + len(rows)

    def _grant(self, digest: str) -> Grant | None:
        now = time.monotonic()
        with self._lock:
            cached = self._grants.get(digest)
            if cached is not None and now - cached[0] <= self._ttl:
                return cached[1]
        with session_scope(self._sessions) as s:
            row = s.execute(
                select(ApiKey.scopes, ApiKey.collections).where(
                    ApiKey.key_hash == digest, ApiKey.revoked.is_(False)
                )
            ).first()
        grant = (
            None
            if row is None
            else Grant(
                frozenset(parse_scopes(row.scopes)),
                None if row.collections is None else frozenset(row.collections),
            )
        )
        with self._lock:
            if len(self._grants) > 10_000:  # unknown keys must not grow the cache forever
                self._grants.clear()
            self._grants[digest] = (now, grant)
        return grant

    def check(self, authorization: str | None, scope: str, collection: str | None = None) -> None:
        """Raise unless auth is off or the bearer key grants ``scope`` on ``collection``."""
        if not self.enabled():
            return
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("Missing bearer API key (Authorization: Bearer <key>)")
        digest = hash_key(authorization[7:].strip())
        if any(hmac.compare_digest(digest, h) for h in self._static):
            grant: Grant | None = _ALL
        else:
            grant = self._grant(digest)
        if grant is None:
            raise Unauthorized("Invalid or revoked API key")
        if not grant.allows(scope, collection):
            if scope not in grant.scopes and "admin" not in grant.scopes:
                raise Forbidden(f"This API key lacks the {scope!r} scope")
            raise Forbidden(f"This API key has no access to collection {collection!r}")


def create_key(
    session: Session,
    name: str,
    scopes: str = "read,write",
    collections: Sequence[str] | None = None,
) -> str:
    """Store a new key and return it (the only time it is visible)."""
    parse_scopes(scopes)
    if collections is not None:
        for coll in collections:
            validate_name(coll)
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise InvalidRequest(f"An API key named {name!r} exists already")
    key = new_key()
    session.add(
        ApiKey(
            name=name,
            key_hash=hash_key(key),
            scopes=scopes,
            revoked=False,
            collections=list(collections) if collections is not None else None,
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
