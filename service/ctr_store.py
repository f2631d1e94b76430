"""Where encoded user histories (BSE states) live: Redis in the full stack, a dict in the
embedded mode; the same interface for both.

A state is stored under ``(model version, user)``, so a state written for one version can
never be read for another. Each entry records what it covers: the id of the newest event
encoded (``last_event_id``) and the newest event's time. Writes only move forwards (compare
and set on ``last_event_id``), so a redelivered or late BSE task, a rebuild racing an
incremental update, or two API processes catching the same user up never replace a state
with an older one.

The arrays go to bytes with ``np.save`` (dtype and shape kept; no pickle on either side).
"""

from __future__ import annotations

import io
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ranker.ctr import UserState

__all__ = [
    "MemoryStateStore",
    "RedisStateStore",
    "StateStore",
    "StoredState",
    "decode_state",
    "encode_state",
]

_PREFIX = "quarry:ctr"
# Format of an entry's bytes: magic, then the arrays one after another as np.save writes them
# (each preceded by its name).
_MAGIC = b"QCTR1"


@dataclass(frozen=True)
class StoredState:
    """A user's encoded history for one model version and what it covers.

    ``state`` is empty when none of the user's events named an item the model knows (the
    user is then scored as a cold start). ``last_event_id`` is the newest event covered and
    ``newest_at`` (epoch seconds) its time: an event older than that arriving later cannot be
    appended, so the history is encoded again from the database.
    """

    state: UserState
    last_event_id: int
    newest_at: float
    events: int  # events covered, the ones naming items unknown to the model included

    @property
    def history_length(self) -> int:
        """Behaviours the model sees (``n_events`` of the state)."""
        n = self.state.get("n_events")
        return int(n) if n is not None else 0


def encode_state(state: UserState) -> bytes:
    """``state`` as bytes: every array with its name, dtype and shape."""
    out = io.BytesIO()
    out.write(_MAGIC)
    out.write(struct.pack("<I", len(state)))
    for name, array in state.items():
        raw = name.encode("utf-8")
        out.write(struct.pack("<I", len(raw)))
        out.write(raw)
        np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def decode_state(data: bytes) -> UserState:
    """The inverse of :func:`encode_state` (object arrays are refused, never unpickled)."""
    buf = io.BytesIO(data)
    if buf.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not an encoded CTR state")
    (count,) = struct.unpack("<I", buf.read(4))
    state: UserState = {}
    for _ in range(count):
        (size,) = struct.unpack("<I", buf.read(4))
        name = buf.read(size).decode("utf-8")
        state[name] = np.load(buf, allow_pickle=False)
    return state


class StateStore(Protocol):
    """Encoded histories by ``(version, user)``, plus the per-user "update queued" flags."""

    #: Whether other processes see what this one writes (Redis) or not (the dict store).
    shared: bool

    def get(self, version: str, user: str) -> StoredState | None: ...

    def put(self, version: str, user: str, stored: StoredState, *, allow_equal: bool) -> bool:
        """Write ``stored`` unless the entry there covers newer events (or the same ones,
        unless ``allow_equal``); returns whether it was written."""
        ...

    def expire_version(self, version: str, ttl_s: float) -> int:
        """Let every state of ``version`` expire after ``ttl_s``; returns how many."""
        ...

    def mark_pending(self, user: str, ttl_s: float) -> bool:
        """Flag ``user`` as having an update queued; ``False`` if it already was."""
        ...

    def clear_pending(self, user: str) -> None: ...

    def ping(self) -> None:
        """Raise unless the store answers."""
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...


class MemoryStateStore:
    """The embedded mode's store: a dict in this process, guarded by a lock."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], StoredState] = {}
        self._expiry: dict[str, float] = {}  # version -> when its states go
        self._pending: dict[str, float] = {}

    def _expired(self, version: str) -> bool:
        deadline = self._expiry.get(version)
        if deadline is None or time.monotonic() < deadline:
            return False
        for key in [k for k in self._states if k[0] == version]:
            del self._states[key]
        del self._expiry[version]
        return True

    def get(self, version: str, user: str) -> StoredState | None:
        with self._lock:
            if self._expired(version):
                return None
            return self._states.get((version, user))

    def put(self, version: str, user: str, stored: StoredState, *, allow_equal: bool) -> bool:
        with self._lock:
            self._expired(version)
            current = self._states.get((version, user))
            if current is not None and (
                current.last_event_id > stored.last_event_id
                or (current.last_event_id == stored.last_event_id and not allow_equal)
            ):
                return False
            self._states[(version, user)] = stored
            return True

    def expire_version(self, version: str, ttl_s: float) -> int:
        with self._lock:
            self._expiry[version] = time.monotonic() + ttl_s
            return sum(1 for k in self._states if k[0] == version)

    def mark_pending(self, user: str, ttl_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._pending.get(user, 0.0) > now:
                return False
            self._pending[user] = now + ttl_s
            return True

    def clear_pending(self, user: str) -> None:
        with self._lock:
            self._pending.pop(user, None)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)


# Compare and set on the covered event id, in one round trip (atomic on the server).
_PUT = """
local cur = redis.call('HGET', KEYS[1], 'last')
if cur then
  local c, n = tonumber(cur), tonumber(ARGV[1])
  if c > n or (c == n and ARGV[5] == '0') then return 0 end
end
redis.call('HSET', KEYS[1], 'last', ARGV[1], 'newest', ARGV[2], 'events', ARGV[3],
           'state', ARGV[4])
redis.call('PERSIST', KEYS[1])
return 1
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisStateStore:
    """States in Redis: one hash per ``(version, user)`` with the state's bytes and what it
    covers (``last``, ``newest``, ``events``)."""

    shared = True

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._put = self._redis.register_script(_PUT)

    @staticmethod
    def key(version: str, user: str) -> str:
        return f"{_PREFIX}:state:{version}:{user}"

    def get(self, version: str, user: str) -> StoredState | None:
        raw = self._redis.hmget(self.key(version, user), ["state", "last", "newest", "events"])
        state, last, newest, events = raw
        if state is None or last is None:
            return None
        return StoredState(
            state=decode_state(state),
            last_event_id=int(last),
            newest_at=float(newest or 0.0),
            events=int(events or 0),
        )

    def put(self, version: str, user: str, stored: StoredState, *, allow_equal: bool) -> bool:
        args: list[bytes | str | int] = [
            stored.last_event_id,
            repr(float(stored.newest_at)),
            stored.events,
            encode_state(stored.state),
            "1" if allow_equal else "0",
        ]
        return bool(self._put(keys=[self.key(version, user)], args=args))

    def expire_version(self, version: str, ttl_s: float) -> int:
        pattern = f"{_glob_escape(f'{_PREFIX}:state:{version}:')}*"
        seconds = max(1, int(ttl_s))
        n = 0
        pipe = self._redis.pipeline(transaction=False)
        for key in self._redis.scan_iter(match=pattern, count=1000):
            pipe.expire(key, seconds)
            n += 1
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()
        return n

    def mark_pending(self, user: str, ttl_s: float) -> bool:
        ms = max(1, int(ttl_s * 1000))
        return bool(self._redis.set(f"{_PREFIX}:pending:{user}", b"1", nx=True, px=ms))

    def clear_pending(self, user: str) -> None:
        self._redis.delete(f"{_PREFIX}:pending:{user}")

    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()
