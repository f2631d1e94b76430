"""CTR serving: the per-process runtime (state store, loaded models, which deployment serves
a name), behaviour-sequence encoding (BSE) and scoring. Deployments and their rebuild are in
:mod:`service.ctr_deploy`.

- **BSE.** New events queue an update of their users' states (debounced per user). The update
  appends the events newer than the ones a state covers (``model.update``), or encodes the
  history again when an event arrived out of time order; it is idempotent (a redelivered task
  finds the state already covering the events) and writes only forwards.
- **Score.** A request resolves the name to one deployment and reads only that version's
  state: a request never mixes versions. A user whose state is missing or behind the
  database (the worker lags, the embedded store was empty) is encoded on the fly from the
  newest ``ctr.max_history_events`` events and the result is cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from sqlalchemy import select

from core.db import session_scope
from core.errors import (
    BrokerUnavailable,
    CTRModelNotFound,
    CTRModelNotReady,
    CTRModelUnavailable,
    InvalidRequest,
    PayloadTooLarge,
    QuarryError,
    UnknownItems,
)
from core.models import CTRDeployment, DeploymentState, EventUser, Job, JobState
from ranker.ctr import CTRServingModel, UserState
from service.ctr_events import Behaviour, behaviours_after, recent_behaviours
from service.ctr_store import MemoryStateStore, RedisStateStore, StateStore, StoredState

if TYPE_CHECKING:
    from core.settings import Settings
    from service.container import Container

logger = logging.getLogger(__name__)

__all__ = [
    "CTRModelNotFound",
    "CTRModelNotReady",
    "CTRModelUnavailable",
    "CTRRuntime",
    "DeploymentInfo",
    "HistoryPolicy",
    "ScoreResult",
    "UnknownItems",
    "encode_users",
    "install_runtime",
    "list_deployments",
    "live_deployments",
    "queue_encoding",
    "refresh_user",
    "runtime",
    "score",
]

#: Loads a CTR model from its directory (``ranker.ctr.load_model`` unless a test says else).
ModelLoader = Callable[[Path], CTRServingModel]


@dataclass(frozen=True)
class HistoryPolicy:
    """Which stored events make up a history, as the model was trained: ``all`` of them, or
    the ``positive`` ones only (label 1; else a rating at or above ``threshold``; an event
    with neither counts as positive, as does every event of an ``implicit`` log)."""

    history: str = "all"
    label_mode: str = "explicit"
    threshold: float = 4.0

    def keeps(self, b: Behaviour) -> bool:
        if self.history != "positive":
            return True
        if b.label is not None:
            return b.label > 0
        if self.label_mode == "implicit" or b.rating is None:
            return True
        return b.rating >= self.threshold

    @classmethod
    def of_model(cls, path: Path) -> HistoryPolicy:
        """The policy recorded with a model directory (``metadata.sample_options`` of
        ``quarry_ctr.json``); every event when it records none."""
        from ranker.ctr.persistence import CONFIG_FILE, read_model_config

        if not (path / CONFIG_FILE).is_file():
            return cls()
        options = (read_model_config(path).get("metadata") or {}).get("sample_options") or {}
        return cls(
            history=str(options.get("history", "all")),
            label_mode=str(options.get("label_mode", "explicit")),
            threshold=float(options.get("threshold", 4.0)),
        )


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and the history policy it was trained with."""

    model: CTRServingModel
    policy: HistoryPolicy


def ranker_loader(device: str) -> ModelLoader:
    """``ranker.ctr.load_model`` on ``device``."""

    def load(path: Path) -> CTRServingModel:
        from ranker.ctr import load_model

        # ItemCatalogue is a Catalogue; the protocol's attribute makes mypy want the exact type.
        return cast(CTRServingModel, load_model(path, device=device))

    return load


# --- deployments and the runtime --------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentInfo:
    """A deployment as the serving path uses it (detached from any session)."""

    id: int
    name: str
    kind: str
    version: str
    path: str
    state: str
    job_id: str | None
    users: int
    error: str | None
    created_at: datetime
    activated_at: datetime | None

    @classmethod
    def of(cls, row: CTRDeployment) -> DeploymentInfo:
        return cls(
            id=row.id,
            name=row.name,
            kind=row.kind,
            version=row.version,
            path=row.path,
            state=row.state,
            job_id=row.job_id,
            users=row.users,
            error=row.error,
            created_at=row.created_at,
            activated_at=row.activated_at,
        )


class ModelCache:
    """Deployed models loaded once per process, by their (immutable) copy's path."""

    def __init__(self, loader: ModelLoader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._loading: dict[str, threading.Lock] = {}

    def load(self, path: Path) -> CTRServingModel:
        """Load a model without caching it (deploy checks what it is given)."""
        return self._loader(path)

    def get(self, dep: DeploymentInfo) -> ServedModel:
        with self._lock:
            served = self._models.get(dep.path)
            gate = self._loading.setdefault(dep.path, threading.Lock())
        if served is None:
            with gate:  # one load per model, however many requests wait for it
                with self._lock:
                    served = self._models.get(dep.path)
                if served is None:
                    served = self._load(dep)
                    with self._lock:
                        self._models[dep.path] = served
        if served.model.version != dep.version:
            raise CTRModelUnavailable(
                f"The files of CTR model {dep.name!r} changed since it was deployed "
                f"(version {served.model.version}, deployed {dep.version}); deploy it again"
            )
        return served

    def _load(self, dep: DeploymentInfo) -> ServedModel:
        path = Path(dep.path)
        if not path.exists():
            raise CTRModelUnavailable(
                f"The files of CTR model {dep.name!r} are missing ({path.name}); deploy it again"
            )
        t0 = time.perf_counter()
        model = self._loader(path)
        policy = HistoryPolicy.of_model(path if path.is_dir() else path.parent)
        logger.info(
            "Loaded CTR model %s (%s, version %s, history %s) in %.2fs",
            dep.name,
            model.kind,
            model.version,
            policy.history,
            time.perf_counter() - t0,
        )
        return ServedModel(model, policy)


def make_store(settings: Settings) -> StateStore:
    """Redis when one is configured (``ctr.store_url``, ``redis_url``, a Redis broker); a
    store in this process otherwise (the embedded mode)."""
    url = settings.ctr.store_url or settings.redis_url
    if url is None and settings.broker_url and settings.broker_url.startswith("redis"):
        url = settings.broker_url
    if url:
        return RedisStateStore(url)
    return MemoryStateStore()


class CTRRuntime:
    """What CTR serving keeps per process: the state store, loaded models, and a short-lived
    view of which deployment serves each name."""

    def __init__(
        self,
        c: Container,
        *,
        store: StateStore | None = None,
        loader: ModelLoader | None = None,
    ) -> None:
        self._settings = c.settings
        self._sessions = c.sessions
        self.store = store if store is not None else make_store(c.settings)
        self.models = ModelCache(loader or ranker_loader(c.settings.ctr.device))
        self._lock = threading.Lock()
        self._active: dict[str, tuple[float, DeploymentInfo | None, bool]] = {}

    def active(self, name: str) -> DeploymentInfo:
        """The deployment serving ``name`` (a view at most ``ctr.deployment_cache_s`` old)."""
        ttl = self._settings.ctr.deployment_cache_s
        now = time.monotonic()
        with self._lock:
            hit = self._active.get(name)
        if hit is None or now - hit[0] > ttl:
            found, building = self._lookup(name)
            hit = (now, found, building)
            with self._lock:
                self._active[name] = hit
        _, dep, building = hit
        if dep is not None:
            return dep
        if building:
            raise CTRModelNotReady(
                f"CTR model {name!r} is still being deployed (its users' histories are being "
                "encoded); try again shortly"
            )
        raise CTRModelNotFound(
            f"No CTR model {name!r} is deployed; deploy one with "
            f"`quarry ctr deploy MODEL_DIR --name {name}`",
            details={"model": name},
        )

    def _lookup(self, name: str) -> tuple[DeploymentInfo | None, bool]:
        if "\x00" in name:
            return None, False
        with session_scope(self._sessions) as s:
            rows = s.scalars(
                select(CTRDeployment).where(
                    CTRDeployment.name == name,
                    CTRDeployment.state.in_([DeploymentState.ACTIVE, DeploymentState.BUILDING]),
                )
            ).all()
            active = [r for r in rows if r.state == DeploymentState.ACTIVE]
            return (
                DeploymentInfo.of(active[0]) if active else None,
                any(r.state == DeploymentState.BUILDING for r in rows),
            )

    def forget(self) -> None:
        """Drop the cached view (tests; a process that just switched a deployment)."""
        with self._lock:
            self._active.clear()

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()


def runtime(c: Container) -> CTRRuntime:
    """The container's CTR runtime (:attr:`service.container.Container.ctr`)."""
    return c.ctr


def install_runtime(c: Container, rt: CTRRuntime) -> CTRRuntime:
    """Use ``rt`` for ``c`` (a test's store or model loader)."""
    c.__dict__["ctr"] = rt
    return rt


def live_deployments(c: Container) -> list[DeploymentInfo]:
    """Deployments whose states are kept up to date: the active ones and those whose rebuild
    is still queued or running."""
    with session_scope(c.sessions) as s:
        rows = s.execute(
            select(CTRDeployment, Job.state)
            .outerjoin(Job, Job.id == CTRDeployment.job_id)
            .where(CTRDeployment.state.in_([DeploymentState.ACTIVE, DeploymentState.BUILDING]))
            .order_by(CTRDeployment.id)
        ).all()
        return [
            DeploymentInfo.of(dep)
            for dep, job_state in rows
            if dep.state == DeploymentState.ACTIVE
            or job_state in (JobState.QUEUED, JobState.RUNNING)
        ]


def list_deployments(c: Container, *, limit: int = 100) -> list[DeploymentInfo]:
    """Deployments, newest first."""
    with session_scope(c.sessions) as s:
        rows = s.scalars(select(CTRDeployment).order_by(CTRDeployment.id.desc()).limit(limit)).all()
        return [DeploymentInfo.of(r) for r in rows]


# --- encoding ---------------------------------------------------------------------------------


def _rows(served: ServedModel, behaviours: Sequence[Behaviour]) -> np.ndarray:
    """Catalogue rows of the behaviours the model's history policy keeps; items the model
    does not know are left out."""
    kept = [b.item_id for b in behaviours if served.policy.keeps(b)]
    if not kept:
        return np.empty(0, dtype=np.int64)
    rows = np.asarray(served.model.catalogue.rows(kept), dtype=np.int64)
    return rows[rows >= 0]


def _encode(served: ServedModel, rows: np.ndarray) -> UserState:
    return served.model.encode(rows) if len(rows) else {}


def _catch_up(
    c: Container,
    served: ServedModel,
    user: str,
    stored: StoredState | None,
    *,
    full: bool,
) -> tuple[StoredState | None, bool]:
    """``user``'s state brought up to the events committed now: ``(state, changed)``.

    Appends the events after ``stored.last_event_id`` when they are all at or after its
    newest time (and not more than a full history); otherwise, or with ``full``, encodes the
    newest ``ctr.max_history_events`` events again. Reads are bounded by the user's row, so a
    state never claims an event it did not see.
    """
    limit = c.settings.ctr.max_history_events
    with session_scope(c.sessions) as s:
        row = s.get(EventUser, user) if "\x00" not in user else None
        if row is None or row.n_events == 0:
            return None, False
        upto, n_events = int(row.last_event_id), int(row.n_events)
        if not full and stored is not None and stored.last_event_id >= upto:
            return stored, False
        new: list[Behaviour] | None = None
        if not full and stored is not None:
            new = behaviours_after(s, user, stored.last_event_id, limit + 1, upto=upto)
            if len(new) > limit or any(b.at < stored.newest_at for b in new):
                new = None  # too many, or out of time order: encode again
        history = None if new is not None else recent_behaviours(s, user, limit, upto=upto)
    if new is not None and stored is not None:
        new.sort(key=lambda b: (b.at, b.id))
        rows = _rows(served, new)
        if not len(rows):
            state = stored.state
        elif stored.state:
            state = served.model.update(stored.state, rows)
        else:
            state = served.model.encode(rows)
        newest = max([stored.newest_at, *(b.at for b in new)])
        return StoredState(state, upto, newest, stored.events + len(new)), True
    assert history is not None
    newest = max((b.at for b in history), default=0.0)
    return StoredState(_encode(served, _rows(served, history)), upto, newest, n_events), True


def refresh_user(
    c: Container,
    dep: DeploymentInfo,
    served: ServedModel,
    user: str,
    *,
    full: bool = False,
) -> StoredState | None:
    """Bring ``user``'s state for ``dep`` up to date in the store; returns it (``None``: the
    user has no events)."""
    store = runtime(c).store
    stored = None if full else store.get(dep.version, user)
    fresh, changed = _catch_up(c, served, user, stored, full=full)
    if fresh is not None and changed:
        store.put(dep.version, user, fresh, allow_equal=full)
    return fresh


def encode_users(c: Container, users: Sequence[str]) -> int:
    """The BSE task: bring the users' states up to date for every live deployment (the
    active ones and those being built). Idempotent; returns the states written."""
    rt = runtime(c)
    for user in users:
        rt.store.clear_pending(user)  # events from now on queue a new update
    written = 0
    for dep in live_deployments(c):
        try:
            served = rt.models.get(dep)
        except QuarryError as exc:
            logger.warning("BSE: skipping CTR model %s: %s", dep.name, exc.message)
            continue
        for user in users:
            stored = rt.store.get(dep.version, user)
            fresh, changed = _catch_up(c, served, user, stored, full=False)
            if fresh is not None and changed:
                written += rt.store.put(dep.version, user, fresh, allow_equal=False)
    return written


def queue_encoding(c: Container, users: Sequence[str]) -> int:
    """Queue the BSE update of ``users`` (new events arrived), one message per batch of
    users whose update is not queued already; returns how many users were queued. A broker
    or store that is down is logged, never raised: the events are stored, and the score
    path encodes a user whose state is behind."""
    from service.dispatch import TASK_BSE

    cfg = c.settings.ctr
    rt = runtime(c)
    try:
        fresh = [u for u in users if rt.store.mark_pending(u, cfg.bse_delay_s + 30.0)]
    except Exception as exc:
        logger.warning("BSE: the state store is unreachable (%s); users encode on demand", exc)
        return 0
    for start in range(0, len(fresh), 500):
        chunk = fresh[start : start + 500]
        try:
            c.dispatcher.send(TASK_BSE, chunk, countdown=cfg.bse_delay_s)
        except BrokerUnavailable:
            logger.warning("BSE: broker unavailable; %d user(s) encode on demand", len(chunk))
            for user in chunk:
                rt.store.clear_pending(user)
            return start
    return len(fresh)


# --- scoring ----------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    model: str
    kind: str
    version: str
    items: list[str]
    probabilities: np.ndarray
    history_length: int
    timings: dict[str, float] = field(default_factory=dict)


def _state_for(
    c: Container, dep: DeploymentInfo, served: ServedModel, user: str
) -> StoredState | None:
    """The user's state for ``dep``: from the store when it covers every event, else caught up
    from the database now (and cached). A store that is down is worked around."""
    store = runtime(c).store
    try:
        stored = store.get(dep.version, user)
        reachable = True
    except Exception as exc:
        logger.warning("CTR state store unreachable (%s); encoding %r from the database", exc, user)
        stored, reachable = None, False
    fresh, changed = _catch_up(c, served, user, stored, full=False)
    if fresh is not None and changed and reachable:
        try:
            store.put(dep.version, user, fresh, allow_equal=False)
        except Exception as exc:
            logger.warning("CTR state store: could not cache %r: %s", user, exc)
    return fresh


def score(
    c: Container, user_id: str, items: Sequence[str], *, model: str | None = None
) -> ScoreResult:
    """Click probabilities of ``items`` for ``user_id`` under the model deployed as ``model``
    (the default one if unset)."""
    t0 = time.perf_counter()
    cfg = c.settings.ctr
    if not items:
        raise InvalidRequest("items must not be empty")
    if len(items) > cfg.max_score_items:
        raise PayloadTooLarge(
            f"{len(items)} items in one request; the limit is {cfg.max_score_items}"
        )
    rt = runtime(c)
    dep = rt.active(model or cfg.default_model)
    served = rt.models.get(dep)
    rows = np.asarray(served.model.catalogue.rows(list(items)), dtype=np.int64)
    if (rows < 0).any():
        unknown = list(dict.fromkeys(items[int(i)] for i in np.flatnonzero(rows < 0)))
        raise UnknownItems(
            f"{len(unknown)} item(s) unknown to CTR model {dep.name!r}: "
            + ", ".join(map(repr, unknown[:5]))
            + (" ..." if len(unknown) > 5 else ""),
            details={"model": dep.name, "items": unknown[:100]},
        )
    t1 = time.perf_counter()
    stored = _state_for(c, dep, served, user_id)
    t2 = time.perf_counter()
    state = stored.state if stored is not None and stored.state else None
    probs = np.asarray(served.model.score(state, rows), dtype=np.float32).reshape(-1)
    t3 = time.perf_counter()
    if probs.shape != (len(items),):
        raise QuarryError(f"CTR model {dep.name!r} returned {probs.shape} scores")
    return ScoreResult(
        model=dep.name,
        kind=dep.kind,
        version=dep.version,
        items=list(items),
        probabilities=probs,
        history_length=stored.history_length if stored is not None else 0,
        timings={
            "resolve_ms": (t1 - t0) * 1000,
            "state_ms": (t2 - t1) * 1000,
            "score_ms": (t3 - t2) * 1000,
            "total_ms": (t3 - t0) * 1000,
        },
    )
