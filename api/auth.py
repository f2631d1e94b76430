"""Bearer API keys with scopes.

Keys come from ``QUARRY_API_KEYS`` (all scopes) and from the ``api_keys`` table (only the
SHA-256 is stored; ``quarry keys create`` prints a new key once). When no key is configured
anywhere the API is open, which is the embedded default.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import session_scope
from core.errors import Forbidden, InvalidRequest, Unauthorized
from core.models import ApiKey

SCOPES = ("read", "write", "admin")
_CACHE_TTL_S = 10.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "qry_" + secrets.token_urlsafe(32)


def parse_scopes(scopes: str) -> set[str]:
    parsed = {s.strip() for s in scopes.split(",") if s.strip()}
    bad = parsed - set(SCOPES)
    if bad:
        raise InvalidRequest(f"Unknown scopes {sorted(bad)}. Valid scopes: {', '.join(SCOPES)}")
    return parsed


class KeyStore:
    """Looks keys up, caching the table for a few seconds."""

    def __init__(self, static_keys: list[str], sessions: sessionmaker[Session]) -> None:
        self._static = {hash_key(k) for k in static_keys}
        self._sessions = sessions
        self._db: dict[str, set[str]] = {}
        self._loaded_at = -1e9
        self._lock = threading.Lock()

    def _db_keys(self) -> dict[str, set[str]]:
        with self._lock:
            if time.monotonic() - self._loaded_at > _CACHE_TTL_S:
                with session_scope(self._sessions) as s:
                    rows = s.execute(
                        select(ApiKey.key_hash, ApiKey.scopes).where(ApiKey.revoked.is_(False))
                    ).all()
                self._db = {h: parse_scopes(sc) for h, sc in rows}
                self._loaded_at = time.monotonic()
            return self._db

    def enabled(self) -> bool:
        return bool(self._static) or bool(self._db_keys())

    def check(self, authorization: str | None, scope: str) -> None:
        """Raise unless auth is off or the bearer key has ``scope`` (``admin`` has all)."""
        if not self.enabled():
            return
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("Missing bearer API key (Authorization: Bearer <key>)")
        digest = hash_key(authorization[7:].strip())
        if any(hmac.compare_digest(digest, h) for h in self._static):
            return
        scopes = self._db_keys().get(digest)
        if scopes is None:
            raise Unauthorized("Invalid API key")
        if scope not in scopes and "admin" not in scopes:
            raise Forbidden(f"This API key lacks the {scope!r} scope")


def create_key(session: Session, name: str, scopes: str = "read,write") -> str:
    """Store a new key and return it (the only time it is visible)."""
    parse_scopes(scopes)
    key = new_key()
    session.add(ApiKey(name=name, key_hash=hash_key(key), scopes=scopes, revoked=False))
    session.flush()
    return key
