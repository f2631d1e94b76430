"""service.keys: the auth modes, grants, the lookup cache, key creation and revocation, and the
``quarry keys create|revoke|list`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_session_factory, session_scope
from core.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from core.models import ApiKey
from core.settings import AuthMode, AuthSettings, Settings
from service.keys import FULL, Grant, KeyStore, create_key, hash_key, list_keys, revoke_key

ROOT = Path(__file__).resolve().parents[2]
STATIC = "static-key-0123456789abcdef"


@pytest.fixture
def sessions(sqlite_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_settings.resolved_database_url)
    yield make_session_factory(engine)
    engine.dispose()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("service.keys.time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def _store(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    mode: AuthMode = "auto",
    cache_s: float = 0.0,
    api_keys: list[str] | None = None,
) -> KeyStore:
    configured = settings.model_copy(
        update={
            "auth": AuthSettings(mode=mode, cache_s=cache_s),
            "api_keys": api_keys or [],
        }
    )
    return KeyStore(configured, sessions)


def _create(
    sessions: sessionmaker[Session], name: str, scopes: str = "read,write", **kw: Any
) -> str:
    with session_scope(sessions) as s:
        return create_key(s, name, scopes, **kw)


def _revoke(sessions: sessionmaker[Session], name: str) -> None:
    with session_scope(sessions) as s:
        revoke_key(s, name)


def bearer(key: str) -> str:
    return f"Bearer {key}"


# --- modes -------------------------------------------------------------------------------------


def test_auto_is_open_until_a_key_exists_and_stays_closed_after_the_last_revocation(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store = _store(sqlite_settings, sessions)
    assert not store.enabled()
    assert store.check(None, "admin", "anything") is FULL  # no key was ever configured

    key = _create(sessions, "first", "read")
    assert store.enabled()
    with pytest.raises(Unauthorized):
        store.check(None, "read")
    assert store.check(bearer(key), "read").scopes == {"read"}

    _revoke(sessions, "first")
    for fresh in (store, _store(sqlite_settings, sessions)):  # this process, and a new one
        assert fresh.enabled()
        assert fresh.active_keys() == 0
        for auth in (None, bearer(key), "Bearer wrong"):
            with pytest.raises(Unauthorized):
                fresh.check(auth, "read")


def test_auto_sees_a_new_key_once_the_cached_answer_expires(
    sqlite_settings: Settings, sessions: sessionmaker[Session], clock: Clock
) -> None:
    store = _store(sqlite_settings, sessions, cache_s=0.5)
    store.check(None, "read")  # caches "open"
    _create(sessions, "late")
    clock.now += 0.4
    store.check(None, "read")  # within the cache window the cached answer stands
    clock.now += 0.2
    with pytest.raises(Unauthorized):
        store.check(None, "read")


def test_on_refuses_everything_while_no_key_exists(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store = _store(sqlite_settings, sessions, mode="on")
    assert store.enabled() and store.active_keys() == 0
    for auth in (None, "Bearer anything", "Basic dXNlcjpwYXNz"):
        with pytest.raises(Unauthorized):
            store.check(auth, "read")


def test_off_is_open_even_with_keys(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _create(sessions, "k", "read")
    store = _store(sqlite_settings, sessions, mode="off", api_keys=[STATIC])
    assert not store.enabled()
    assert store.check(None, "admin", "kb") is FULL
    assert store.check("Bearer wrong", "admin") is FULL


def test_a_static_key_turns_auth_on_and_grants_everything(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store = _store(sqlite_settings, sessions, api_keys=[STATIC, ""])
    assert store.enabled() and store.active_keys() == 1  # the empty entry is no key
    assert store.check(bearer(STATIC), "admin", "any-collection") is FULL
    assert store.check(f"bearer   {STATIC}  ", "write") is FULL  # scheme case, spaces
    for auth in (None, "", "Bearer", "Bearer ", "Bearer   ", STATIC, f"Basic {STATIC}", "Bearer x"):
        with pytest.raises(Unauthorized):
            store.check(auth, "read")


# --- grants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "collections", "scope", "collection", "allowed"),
    [
        ({"read"}, None, "read", None, True),
        ({"read"}, None, "read", "kb", True),
        ({"read"}, None, "write", None, False),
        ({"read"}, None, "admin", "kb", False),
        ({"write"}, None, "read", None, False),  # write does not imply read
        ({"write"}, None, "write", "kb", True),
        ({"admin"}, None, "read", "kb", True),  # admin implies every scope
        ({"admin"}, None, "write", None, True),
        ({"read", "write"}, None, "admin", None, False),
        ({"read"}, {"kb"}, "read", "kb", True),
        ({"read"}, {"kb"}, "read", "other", False),
        ({"read"}, {"kb"}, "read", None, True),  # a route that names no collection
        ({"admin"}, {"kb"}, "admin", "other", False),  # admin stays within its collections
        ({"admin"}, {"kb"}, "admin", "kb", True),
        ({"read"}, set(), "read", "kb", False),
        (set(), None, "read", None, False),
    ],
)
def test_grant_allows(
    scopes: set[str],
    collections: set[str] | None,
    scope: str,
    collection: str | None,
    allowed: bool,
) -> None:
    grant = Grant(frozenset(scopes), None if collections is None else frozenset(collections))
    assert grant.allows(scope, collection) is allowed
    if allowed:
        grant.require(scope, collection)
    else:
        with pytest.raises(Forbidden):
            grant.require(scope, collection)


def test_only_an_unrestricted_grant_covers_an_unknown_collection() -> None:
    restricted = Grant(frozenset({"read"}), frozenset({"kb"}))
    assert restricted.covers("kb") and not restricted.covers("other")
    assert not restricted.covers(None)
    with pytest.raises(Forbidden, match="no access to collection"):
        restricted.require_collection(None)
    assert FULL.covers(None) and FULL.covers("x")
    FULL.require_collection(None)


def test_database_keys_carry_their_scopes_and_collections(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    reader = _create(sessions, "reader", "read")
    scoped = _create(sessions, "scoped", "admin", collections=["kb", "logs"])
    store = _store(sqlite_settings, sessions)

    assert store.check(bearer(reader), "read", "anything").collections is None
    with pytest.raises(Forbidden, match="lacks the 'write' scope"):
        store.check(bearer(reader), "write")

    grant = store.check(bearer(scoped), "write", "kb")
    assert grant.collections == {"kb", "logs"}
    store.check(bearer(scoped), "admin", "logs")
    store.check(bearer(scoped), "read")  # no collection named: the scope alone decides
    with pytest.raises(Forbidden, match="no access to collection 'other'"):
        store.check(bearer(scoped), "read", "other")


def test_a_hand_edited_row_with_unknown_scopes_grants_nothing(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    key = _create(sessions, "edited", "read")
    with session_scope(sessions) as s:
        s.execute(update(ApiKey).where(ApiKey.name == "edited").values(scopes="superuser"))
    store = _store(sqlite_settings, sessions)
    assert store.authenticate(bearer(key)).scopes == frozenset()
    with pytest.raises(Forbidden):
        store.check(bearer(key), "read")


# --- the lookup cache --------------------------------------------------------------------------


def test_a_revoked_key_is_refused_once_its_cached_grant_expires(
    sqlite_settings: Settings, sessions: sessionmaker[Session], clock: Clock
) -> None:
    key = _create(sessions, "k", "read")
    store = _store(sqlite_settings, sessions, cache_s=0.5)
    store.check(bearer(key), "read")
    _revoke(sessions, "k")
    clock.now += 0.5
    store.check(bearer(key), "read")  # still cached: at most cache_s old
    clock.now += 0.01
    with pytest.raises(Unauthorized, match="Invalid or revoked"):
        store.check(bearer(key), "read")
    clock.now += 10
    with pytest.raises(Unauthorized):  # and stays refused
        store.check(bearer(key), "read")


def test_an_unknown_key_is_cached_as_unknown_only_for_the_cache_window(
    sqlite_settings: Settings, sessions: sessionmaker[Session], clock: Clock
) -> None:
    _create(sessions, "first")
    store = _store(sqlite_settings, sessions, cache_s=0.5)
    key = "qry_not-yet-stored"
    with pytest.raises(Unauthorized):
        store.check(bearer(key), "read")
    with session_scope(sessions) as s:  # the same key stored now (as create_key would)
        s.add(ApiKey(name="later", key_hash=hash_key(key), scopes="read", revoked=False))
    with pytest.raises(Unauthorized):
        store.check(bearer(key), "read")
    clock.now += 0.6
    store.check(bearer(key), "read")


def test_without_a_cache_every_check_reads_the_database(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    key = _create(sessions, "k", "read")
    store = _store(sqlite_settings, sessions, cache_s=0.0)
    store.check(bearer(key), "read")
    _revoke(sessions, "k")
    with pytest.raises(Unauthorized):
        store.check(bearer(key), "read")


def test_check_cached_answers_without_the_database_only_what_the_cache_knows(
    sqlite_settings: Settings, sessions: sessionmaker[Session], clock: Clock
) -> None:
    # The event-loop path (api.deps): None means "ask the database on a worker thread".
    key = _create(sessions, "k", "read", collections=["kb"])
    store = _store(sqlite_settings, sessions, cache_s=0.5)
    assert store.check_cached(bearer(key), "read") is None  # nothing known yet
    assert store.check(bearer(key), "read", "kb").collections == {"kb"}
    grant = store.check_cached(bearer(key), "read", "kb")  # now cached: no query
    assert grant is not None and grant.scopes == {"read"}
    with pytest.raises(Forbidden):  # the cached grant is still checked
        store.check_cached(bearer(key), "write")
    with pytest.raises(Forbidden):
        store.check_cached(bearer(key), "read", "other")
    with pytest.raises(Unauthorized):  # auth is known to be on: no key is refused at once
        store.check_cached(None, "read")
    _revoke(sessions, "k")
    clock.now += 0.6  # cache expired: the revocation must be read from the database
    assert store.check_cached(bearer(key), "read") is None
    with pytest.raises(Unauthorized):
        store.check(bearer(key), "read")
    with pytest.raises(Unauthorized, match="Invalid or revoked"):  # cached as refused
        store.check_cached(bearer(key), "read")

    assert _store(sqlite_settings, sessions, mode="off").check_cached(None, "admin") is FULL
    static = _store(sqlite_settings, sessions, api_keys=[STATIC])
    assert static.check_cached(bearer(STATIC), "admin", "x") is FULL
    fresh = _store(sqlite_settings, sessions, cache_s=0.5)  # auto: on or off is not known yet
    assert fresh.check_cached(None, "read") is None


# --- create, revoke, list ----------------------------------------------------------------------


def test_create_key_stores_only_the_hash_and_canonical_scopes(
    sessions: sessionmaker[Session],
) -> None:
    key = _create(sessions, "svc", " write , read,admin", collections=["kb", "b", "kb"])
    assert key.startswith("qry_") and len(key) > 40
    with session_scope(sessions) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.name == "svc")).one()
        assert row.key_hash == hash_key(key) and key not in row.key_hash
        assert row.scopes == "read,write,admin"
        assert row.collections == ["kb", "b"]
        assert not row.revoked and row.revoked_at is None
    assert _create(sessions, "other") != key


@pytest.mark.parametrize(
    ("name", "scopes", "collections", "message"),
    [
        ("k", "read,root", None, "Unknown scopes"),
        ("k", "", None, "at least one scope"),
        ("k", " , ", None, "at least one scope"),
        ("k", "read", ["bad name"], "Invalid collection name"),
        ("k", "read", ["ok", "../etc"], "Invalid collection name"),
        ("k", "read", [], "empty collection list"),
        ("", "read", None, "Invalid API key name"),
        (" k", "read", None, "Invalid API key name"),
        ("k" * 129, "read", None, "Invalid API key name"),
    ],
)
def test_create_key_refuses_invalid_input(
    sessions: sessionmaker[Session],
    name: str,
    scopes: str,
    collections: list[str] | None,
    message: str,
) -> None:
    with pytest.raises(InvalidRequest, match=message), session_scope(sessions) as s:
        create_key(s, name, scopes, collections)
    with session_scope(sessions) as s:
        assert list_keys(s) == []


def test_create_key_refuses_a_duplicate_name_even_when_revoked(
    sessions: sessionmaker[Session],
) -> None:
    _create(sessions, "dup")
    with pytest.raises(InvalidRequest, match="exists already"):
        _create(sessions, "dup")
    _revoke(sessions, "dup")
    with pytest.raises(InvalidRequest, match="exists already"):
        _create(sessions, "dup")


def test_a_bare_collection_name_is_one_collection(sessions: sessionmaker[Session]) -> None:
    _create(sessions, "k", "read", collections="kb")
    with session_scope(sessions) as s:
        assert list_keys(s)[0].collections == ["kb"]


def test_revoke_unknown_or_revoked_key_is_not_found(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with pytest.raises(NotFound, match="No active API key named 'ghost'"):
        _revoke(sessions, "ghost")
    _create(sessions, "k")
    _create(sessions, "a")
    _revoke(sessions, "k")
    with pytest.raises(NotFound):
        _revoke(sessions, "k")
    with session_scope(sessions) as s:
        rows = {k.name: k for k in list_keys(s)}
        assert list(rows) == ["a", "k"]  # by name
        assert rows["k"].revoked and rows["k"].revoked_at is not None
        assert not rows["a"].revoked
    assert _store(sqlite_settings, sessions).active_keys() == 1


# --- the CLI -----------------------------------------------------------------------------------


def _quarry(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUARRY_DATA_DIR": str(data_dir)}
    for var in ("QUARRY_BROKER_URL", "QUARRY_DATABASE_URL", "QUARRY_API_KEYS", "QUARRY_ENV"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _quarry(data, "db", "upgrade").returncode == 0

    made = _quarry(data, "keys", "create", "ingest", "--scopes", "write,read")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("qry_") and "\n" not in key  # the key alone on stdout
    scoped = _quarry(
        data, "keys", "create", "kb-reader", "--scopes", "read", "--collection", "kb",
        "--collection", "other",
    )  # fmt: skip
    assert scoped.returncode == 0, scoped.stderr

    listed = _quarry(data, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows == [
        ["ingest", "read,write", "*", "active"],
        ["kb-reader", "read", "kb,other", "active"],
    ]
    assert key not in listed.stdout + listed.stderr

    revoked = _quarry(data, "keys", "revoke", "ingest")
    assert revoked.returncode == 0 and "Revoked ingest" in revoked.stdout
    rows = [line.split() for line in _quarry(data, "keys", "list").stdout.splitlines()]
    assert rows[0] == ["ingest", "read,write", "*", "revoked"]

    for args, message in [
        (("revoke", "ingest"), "error (not_found): No active API key named 'ingest'"),
        (("create", "kb-reader"), "error (invalid_request): An API key named 'kb-reader'"),
        (("create", "x", "--scopes", "sudo"), "error (invalid_request): Unknown scopes"),
        (("create", "x", "--collection", "a b"), "Invalid collection name 'a b'"),
    ]:
        out = _quarry(data, "keys", *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr
    engine = make_engine(f"sqlite:///{data / 'quarry.db'}")
    with session_scope(make_session_factory(engine)) as s:
        stored = {k.name: k for k in list_keys(s)}
    engine.dispose()
    assert set(stored) == {"ingest", "kb-reader"}
    assert stored["kb-reader"].collections == ["kb", "other"]
    assert stored["ingest"].key_hash == hash_key(key)
