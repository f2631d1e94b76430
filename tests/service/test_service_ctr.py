"""CTR serving: events and items, the state stores, BSE encoding (incremental, idempotent,
versioned), deployments with their rebuild and atomic switch, and scoring.

Most tests use :class:`TinyModel`, a deterministic stand-in for the serving contract whose
states carry their model version (it refuses a state of another version) and an
order-sensitive fingerprint of the history (so "incremental equals rebuild" checks order
too). The last tests train a real tiny model with ``ranker.ctr`` and serve it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.db import session_scope
from core.errors import InvalidRequest, PayloadTooLarge
from core.models import CTRDeployment, DeploymentState, EventUser, JobKind, JobState
from core.settings import Settings
from ranker.ctr import UserState
from service import Container, build
from service import ctr as use
from service import ctr_deploy as deploying
from service.ctr_events import EventIn, ItemIn, get_item, ingest_events, upsert_items, user_history
from service.ctr_files import EventColumns, read_event_file
from service.ctr_store import (
    MemoryStateStore,
    RedisStateStore,
    StateStore,
    StoredState,
    decode_state,
    encode_state,
)

ITEMS = [f"i{n}" for n in range(20)]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


# --- a deterministic serving model --------------------------------------------------------------


class TinyCatalogue:
    def __init__(self, items: Sequence[str]) -> None:
        self._index = {item: row for row, item in enumerate(items)}

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.array([self._index.get(i, -1) for i in item_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)


class TinyModel:
    """State: the sum of the behaviours' vectors, an order-sensitive fingerprint of the rows,
    ``n_events`` and the model's version tag. Counts its calls."""

    kind = "tiny"

    def __init__(self, version: str, seed: int) -> None:
        self.name = f"tiny-{version}"
        self.version = version
        self.catalogue = TinyCatalogue(ITEMS)
        # Small integers: sums are exact whatever the order they are added in.
        rng = np.random.default_rng(seed)
        self.emb = rng.integers(-3, 4, size=(len(ITEMS), 4)).astype(np.float32)
        self.tag = np.int64(sum(version.encode()) * 1_000 + seed)
        self.calls = {"encode": 0, "update": 0, "score": 0, "cold": 0}
        self._lock = threading.Lock()

    def _check(self, state: UserState) -> None:
        assert int(state["tag"]) == int(self.tag), "a state of another model version"

    def encode(self, rows: np.ndarray) -> UserState:
        with self._lock:
            self.calls["encode"] += 1
        empty = {
            "sum": np.zeros(4, np.float32),
            "fingerprint": np.asarray(7, np.int64),
            "tag": np.asarray(self.tag),
            "n_events": np.asarray(0, np.int64),
        }
        return self._extend(empty, rows)

    def update(self, state: UserState, rows: np.ndarray) -> UserState:
        with self._lock:
            self.calls["update"] += 1
        return self._extend(state, rows)

    def _extend(self, state: UserState, rows: np.ndarray) -> UserState:
        self._check(state)
        assert rows.dtype == np.int64 and (rows >= 0).all()
        fingerprint = int(state["fingerprint"])
        for row in rows.tolist():
            fingerprint = (fingerprint * 31 + row + 1) % (2**61 - 1)
        return {
            "sum": (state["sum"] + self.emb[rows].sum(axis=0)).astype(np.float32),
            "fingerprint": np.asarray(fingerprint, np.int64),
            "tag": np.asarray(self.tag),
            "n_events": np.asarray(int(state["n_events"]) + len(rows), np.int64),
        }

    def score(self, state: UserState | None, candidates: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls["score"] += 1
            self.calls["cold"] += state is None
        if state is None:
            return np.full(len(candidates), 0.5, np.float32)
        self._check(state)
        logits = self.emb[candidates] @ state["sum"]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def write_tiny(path: Path, version: str, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tiny.json").write_text(json.dumps({"version": version, "seed": seed}))
    return path


class TinyLoader:
    """Loads ``tiny.json`` directories; one model object per version (so tests see calls)."""

    def __init__(self) -> None:
        self.models: dict[str, TinyModel] = {}

    def __call__(self, path: Path) -> TinyModel:
        spec = json.loads((path / "tiny.json").read_text())
        return self.models.setdefault(spec["version"], TinyModel(spec["version"], spec["seed"]))


class Recorder:
    """A dispatcher that records jobs and tasks without running them."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []
        self.tasks: list[tuple[str, list[str]]] = []

    def submit(self, kind: JobKind, job_id: str) -> None:
        self.jobs.append((str(kind), job_id))

    def send(self, name: str, args: list[str], *, countdown: float | None = None) -> None:
        self.tasks.append((name, list(args)))

    def close(self) -> None:
        pass


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    from core.migrate import upgrade

    s = Settings(data_dir=tmp_path / "quarry", env="test")
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def loader() -> TinyLoader:
    return TinyLoader()


@pytest.fixture
def c(settings: Settings, loader: TinyLoader) -> Iterator[Container]:
    container = build(settings)
    use.install_runtime(
        container, use.CTRRuntime(container, store=MemoryStateStore(), loader=loader)
    )
    yield container
    container.close()


def recorder(c: Container) -> Recorder:
    rec = Recorder()
    c.__dict__["dispatcher"] = rec
    return rec


def ev(user: str, item: str, minute: int, **kw: Any) -> EventIn:
    return EventIn(user_id=user, item_id=item, timestamp=T0 + timedelta(minutes=minute), **kw)


def deploy_now(c: Container, tmp_path: Path, version: str, seed: int, name: str = "m") -> Any:
    """Deploy and run the rebuild in this thread (the recorder keeps the job from running)."""
    rec = recorder(c)
    source = write_tiny(tmp_path / f"src-{version}", version, seed)
    out = deploying.deploy(c, source, name, rebuild=True)
    assert out.job is not None and rec.jobs == [(JobKind.CTR_REBUILD, out.job.id)]
    deploying.run_rebuild(c, out.job.id)
    use.runtime(c).forget()
    return out


def state_of(c: Container, version: str, user: str) -> StoredState:
    stored = use.runtime(c).store.get(version, user)
    assert stored is not None
    return stored


def same_state(a: UserState, b: UserState) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a
    )


# --- the stores ----------------------------------------------------------------------------------


def test_state_bytes_keep_names_dtypes_and_shapes() -> None:
    state = {
        "sums": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "keys": np.array([[1, 2]], dtype=np.int64),
        "n_events": np.asarray(5, dtype=np.int64),
        "empty": np.zeros((0, 8), dtype=np.float32),
    }
    back = decode_state(encode_state(state))
    assert same_state(state, back)
    assert back["n_events"].shape == () and back["empty"].shape == (0, 8)
    with pytest.raises(ValueError):
        decode_state(b"pickle me")
    obj = {"x": np.array([{"a": 1}], dtype=object)}
    with pytest.raises(ValueError):  # object arrays never go through pickle
        encode_state(obj)


def _check_store(store: StateStore, version: str) -> None:
    def st(last: int, value: float) -> StoredState:
        return StoredState({"v": np.asarray([value], np.float32)}, last, float(last), last)

    assert store.get(version, "u/1") is None
    assert store.put(version, "u/1", st(5, 1.0), allow_equal=False)
    assert not store.put(version, "u/1", st(4, 2.0), allow_equal=True)  # older: refused
    assert not store.put(version, "u/1", st(5, 3.0), allow_equal=False)  # the same events
    assert store.put(version, "u/1", st(5, 4.0), allow_equal=True)  # a rebuild may rewrite
    assert store.put(version, "u/1", st(9, 5.0), allow_equal=False)
    got = store.get(version, "u/1")
    assert got is not None and got.last_event_id == 9 and got.events == 9
    assert got.state["v"].tolist() == [5.0] and got.newest_at == 9.0
    assert store.get(version + "-other", "u/1") is None  # keyed by version
    assert store.mark_pending("u/1", 30) and not store.mark_pending("u/1", 30)
    store.clear_pending("u/1")
    assert store.mark_pending("u/1", 30)
    assert store.expire_version(version, 0.01) == 1
    assert store.get(version + "-other", "u/1") is None


def test_memory_store_semantics() -> None:
    import time

    store = MemoryStateStore()
    _check_store(store, "v1")
    time.sleep(0.05)
    assert store.get("v1", "u/1") is None  # expired


@pytest.mark.services
def test_redis_store_semantics(redis_url: str) -> None:
    import time

    import redis

    store = RedisStateStore(redis_url)
    _check_store(store, "v*[1]")  # glob characters in a version do not widen the expiry
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl(RedisStateStore.key("v*[1]", "u/1")) <= 1000
    time.sleep(1.2)
    assert store.get("v*[1]", "u/1") is None
    store.close()


# --- items and events ----------------------------------------------------------------------------


def test_items_upsert_counts_and_reads_back(c: Container) -> None:
    out = upsert_items(c, [ItemIn("a/1", "drama", {"year": 1999}), ItemIn("b")])
    assert (out.created, out.updated, out.unchanged) == (2, 0, 0)
    out = upsert_items(c, [ItemIn("a/1", "comedy", {"year": 1999}), ItemIn("b"), ItemIn("c")])
    assert (out.created, out.updated, out.unchanged) == (1, 1, 1)
    item = get_item(c, "a/1")
    assert item.category == "comedy" and item.meta == {"year": 1999}
    with pytest.raises(Exception, match="does not exist"):
        get_item(c, "nope")


def test_events_are_idempotent_and_read_back_newest_first(c: Container) -> None:
    rec = recorder(c)
    batch = [
        ev("u1", "i1", 0),
        ev("u1", "i2", 5, rating=4.5),
        ev("u1", "i3", 2, id="click-7", label=1),
        ev("u2", "i1", 1),
        ev("u1", "i1", 0),  # the same (user, item, time) twice in one call
    ]
    out = ingest_events(c, batch)
    assert (out.received, out.stored, out.duplicates, out.users) == (5, 4, 1, ["u1", "u2"])
    assert rec.tasks == [("quarry.bse", ["u1", "u2"])]
    # Re-sent: nothing new; a new time for the client id still dedupes on the id.
    again = ingest_events(c, [*batch[:2], ev("u1", "i9", 30, id="click-7")])
    assert (again.stored, again.duplicates, again.users) == (0, 3, [])
    page = user_history(c, "u1", limit=10)
    assert [(e.item_id, e.timestamp) for e in page.events] == [
        ("i2", T0 + timedelta(minutes=5)),
        ("i3", T0 + timedelta(minutes=2)),
        ("i1", T0),
    ]
    assert page.total == 3 and page.events[1].client_id == "click-7"
    assert page.events[0].rating == 4.5 and page.events[1].label == 1
    assert [e.item_id for e in user_history(c, "u1", limit=1).events] == ["i2"]
    assert user_history(c, "nobody", limit=5).total == 0
    with session_scope(c.sessions) as s:
        row = s.get(EventUser, "u1")
        assert row is not None and row.n_events == 3


def test_events_without_time_happen_now_and_times_are_checked() -> None:
    from pydantic import ValidationError

    before = datetime.now(UTC)
    e = EventIn(user_id="u", item_id="i", timestamp=datetime(2024, 1, 1, 12))  # naive: UTC
    assert e.timestamp == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert EventIn(user_id="u", item_id="i").timestamp is None and before.year >= 2024
    for bad in (datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)):
        with pytest.raises(ValidationError, match="event times"):
            EventIn(user_id="u", item_id="i", timestamp=bad)
    # Epoch seconds or milliseconds, ISO text; nothing else is coerced.
    assert EventIn(user_id="u", item_id="i", timestamp=1704067200).timestamp == T0
    assert EventIn(user_id="u", item_id="i", timestamp=1704067200000).timestamp == T0
    assert EventIn(user_id="u", item_id="i", timestamp="2024-01-01T01:00:00+01:00").timestamp == T0
    for value in ("2024-01-01", "1704067200", True):
        with pytest.raises(ValidationError):
            EventIn(user_id="u", item_id="i", timestamp=value)
    for bad_rating in (float("nan"), True, "4.5"):
        with pytest.raises(ValidationError):
            EventIn(user_id="u", item_id="i", rating=bad_rating)
    with pytest.raises(ValidationError):
        EventIn(user_id="u", item_id="i", label=True)
    with pytest.raises(ValidationError):
        EventIn(user_id="u\x00", item_id="i")


def test_event_files_csv_tsv_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "ratings.csv"
    csv_file.write_text(
        "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,964982703\n"
    )
    got = list(read_event_file(csv_file, EventColumns(user="userId", item="movieId")))
    assert [(e.user_id, e.item_id, e.rating) for e in got] == [("1", "31", 2.5), ("1", "1029", 3.0)]
    assert got[0].timestamp == datetime.fromtimestamp(1260759144, UTC)
    tsv = tmp_path / "log.tsv"
    tsv.write_text("user_id\titem_id\ttimestamp\tlabel\nu\tx\t2024-01-01T00:00:00Z\t1\n")
    (e,) = read_event_file(tsv)
    assert e.timestamp == T0 and e.label == 1
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"user_id": "u", "item_id": "x", "timestamp": 1704067200000, "id": "e1"}\n')
    (e,) = read_event_file(jsonl)
    assert e.timestamp == T0 and e.id == "e1"  # milliseconds told from seconds
    with pytest.raises(InvalidRequest, match=r"log\.tsv:2: no column 'when'"):
        list(read_event_file(tsv, EventColumns(time="when")))
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu,x,yesterday\n")
    with pytest.raises(InvalidRequest, match=r"bad\.csv:2: not an ISO 8601 time"):
        list(read_event_file(bad))


# --- encoding, versions, deployments ------------------------------------------------------------


def test_incremental_encoding_equals_a_rebuild_and_redelivery_is_a_no_op(
    c: Container, tmp_path: Path, loader: TinyLoader
) -> None:
    deploy_now(c, tmp_path, "A", seed=1)
    model = loader.models["A"]
    ingest_events(c, [ev("u", f"i{n}", n) for n in range(5)])
    assert use.encode_users(c, ["u"]) == 1
    first = state_of(c, "A", "u")
    assert model.calls["encode"] == 1 and int(first.state["n_events"]) == 5
    # Three more batches, one arriving out of time order (minute 2.5 after minute 9).
    ingest_events(c, [ev("u", "i7", 7), ev("u", "i8", 8)])
    use.encode_users(c, ["u"])
    assert model.calls["update"] == 1  # appended, not encoded again
    ingest_events(c, [ev("u", "i9", 9), ev("u", "i11", 11), ev("u", "unknown-item", 10)])
    use.encode_users(c, ["u"])
    incremental = state_of(c, "A", "u")
    assert model.calls["update"] == 2 and int(incremental.state["n_events"]) == 9
    assert incremental.events == 10  # the unknown item is covered, not encoded

    calls = dict(model.calls)
    assert use.encode_users(c, ["u"]) == 0  # a redelivered task: nothing to do
    assert model.calls == calls and state_of(c, "A", "u") == incremental

    rebuilt = use.refresh_user(
        c,
        use.runtime(c).active("m"),
        use.runtime(c).models.get(use.runtime(c).active("m")),
        "u",
        full=True,
    )
    assert rebuilt is not None and same_state(rebuilt.state, incremental.state)

    # An event older than the newest one encoded cannot be appended: encoded again, in order.
    ingest_events(c, [ev("u", "i3", 3, id="late")])
    use.encode_users(c, ["u"])
    late = state_of(c, "A", "u")
    assert model.calls["encode"] == calls["encode"] + 2  # the rebuild above, then this one
    expected = model.encode(
        model.catalogue.rows([f"i{n}" for n in (0, 1, 2, 3, 3, 4, 7, 8, 9, 11)])
    )
    assert same_state(late.state, expected)


def test_a_request_never_mixes_versions_and_the_switch_waits_for_the_rebuild(
    c: Container, tmp_path: Path, loader: TinyLoader
) -> None:
    deploy_now(c, tmp_path, "A", seed=1)
    ingest_events(c, [ev("u", "i1", 0), ev("u", "i2", 1), ev("v", "i3", 0)])
    use.encode_users(c, ["u", "v"])
    before = use.score(c, "u", ["i4", "i5"], model="m")
    assert before.version == "A" and before.history_length == 2

    # Deploy B: it builds while A keeps serving.
    rec = recorder(c)
    out = deploying.deploy(c, write_tiny(tmp_path / "src-B", "B", seed=2), "m", rebuild=True)
    assert out.deployment.state == DeploymentState.BUILDING and out.job is not None
    use.runtime(c).forget()
    during = use.score(c, "u", ["i4", "i5"], model="m")
    assert during.version == "A"
    assert np.array_equal(during.probabilities, before.probabilities)
    ingest_events(c, [ev("u", "i6", 2)])  # new events reach both the old and the new version
    use.encode_users(c, ["u"])
    assert int(state_of(c, "A", "u").state["n_events"]) == 3
    assert int(state_of(c, "B", "u").state["n_events"]) == 3

    deploying.run_rebuild(c, out.job.id)
    use.runtime(c).forget()
    after = use.score(c, "u", ["i4", "i5"], model="m")
    assert after.version == "B" and after.history_length == 3
    # B's states came from B's encoder (TinyModel refuses another version's state).
    b = loader.models["B"]
    assert same_state(state_of(c, "B", "v").state, b.encode(b.catalogue.rows(["i3"])))
    assert not same_state(state_of(c, "A", "u").state, state_of(c, "B", "u").state)
    with session_scope(c.sessions) as s:
        states = {d.version: d.state for d in s.query(CTRDeployment)}
        job = s.get(__import__("core.models").models.Job, out.job.id)
        assert job is not None and job.state == JobState.SUCCEEDED and job.done == 2
    assert states == {"A": DeploymentState.RETIRED, "B": DeploymentState.ACTIVE}
    assert rec.jobs == [(JobKind.CTR_REBUILD, out.job.id)]


def test_an_older_deployment_finishing_last_does_not_take_over(
    c: Container, tmp_path: Path
) -> None:
    recorder(c)
    first = deploying.deploy(c, write_tiny(tmp_path / "a", "A", 1), "m", rebuild=True)
    second = deploying.deploy(c, write_tiny(tmp_path / "b", "B", 2), "m", rebuild=True)
    assert first.job is not None and second.job is not None
    deploying.run_rebuild(c, second.job.id)
    deploying.run_rebuild(c, first.job.id)
    use.runtime(c).forget()
    assert use.runtime(c).active("m").version == "B"
    assert {d.version: d.state for d in use.list_deployments(c)} == {
        "A": DeploymentState.RETIRED,
        "B": DeploymentState.ACTIVE,
    }


def test_on_the_fly_encoding_cold_start_and_errors(
    c: Container, tmp_path: Path, loader: TinyLoader
) -> None:
    with pytest.raises(use.CTRModelNotFound, match="quarry ctr deploy"):
        use.score(c, "u", ["i1"], model="m")
    recorder(c)
    building = deploying.deploy(c, write_tiny(tmp_path / "a", "A", 1), "m", rebuild=True)
    use.runtime(c).forget()
    with pytest.raises(use.CTRModelNotReady):
        use.score(c, "u", ["i1"], model="m")
    assert building.job is not None
    deploying.run_rebuild(c, building.job.id)
    use.runtime(c).forget()
    model = loader.models["A"]

    # Events but no state (the worker lags): encoded now from the database, and cached.
    ingest_events(c, [ev("u", "i1", 0), ev("u", "i2", 1)])
    assert use.runtime(c).store.get("A", "u") is None
    got = use.score(c, "u", ["i3", "i1"], model="m")
    assert got.history_length == 2 and state_of(c, "A", "u").last_event_id > 0
    want = model.score(model.encode(np.array([1, 2])), np.array([3, 1]))
    assert np.allclose(got.probabilities, want)
    assert set(got.timings) == {"resolve_ms", "state_ms", "score_ms", "total_ms"}
    # A stale state is caught up before scoring (read-your-writes).
    ingest_events(c, [ev("u", "i5", 2)])
    assert use.score(c, "u", ["i3"], model="m").history_length == 3

    cold = use.score(c, "stranger", ["i1", "i2"], model="m")
    assert cold.history_length == 0 and model.calls["cold"] == 1
    assert cold.probabilities.tolist() == [0.5, 0.5]

    with pytest.raises(use.UnknownItems) as err:
        use.score(c, "u", ["i1", "zz", "yy", "zz"], model="m")
    assert err.value.status == 422 and err.value.details["items"] == ["zz", "yy"]
    c.settings.ctr.max_score_items = 3
    with pytest.raises(PayloadTooLarge):
        use.score(c, "u", ["i1"] * 4, model="m")


def test_history_policy_keeps_positive_events_when_the_model_was_trained_so() -> None:
    from service.ctr_events import Behaviour

    policy = use.HistoryPolicy(history="positive", label_mode="explicit", threshold=4.0)
    keep = [
        policy.keeps(Behaviour(1, "x", 0.0, rating=r, label=lab))
        for r, lab in ((4.5, None), (3.0, None), (None, 1), (5.0, 0), (None, None))
    ]
    assert keep == [True, False, True, False, True]
    assert use.HistoryPolicy().keeps(Behaviour(1, "x", 0.0, rating=1.0, label=0))


def test_deploy_in_the_embedded_mode_switches_at_once(c: Container, tmp_path: Path) -> None:
    source = write_tiny(tmp_path / "src", "A", 1)
    out = deploying.deploy(c, source, "m")  # the in-process store: nothing to build ahead
    assert out.deployment.state == DeploymentState.ACTIVE
    assert out.job is not None and out.job.state == JobState.SUCCEEDED
    served = Path(out.deployment.path)
    assert served.is_dir() and served != source and (served / "tiny.json").is_file()
    assert deploying.deploy(c, source, "m").unchanged
    with pytest.raises(InvalidRequest, match="Invalid model name"):
        deploying.deploy(c, source, "bad name")
    with pytest.raises(InvalidRequest, match="Nothing to rebuild"):
        deploying.rebuild(c, "m")


# --- a real model --------------------------------------------------------------------------------


def train_tiny_ctr(out: Path, kind: str = "sdim", seed: int = 0) -> Path:
    """A real ``ranker.ctr`` model trained for one short epoch on a synthetic log of 30 users
    and 40 items in 4 categories (a few seconds on CPU)."""
    from ranker.ctr import (
        InteractionLog,
        ItemCatalogue,
        SampleOptions,
        TrainOptions,
        build_samples,
        make_config,
        train_model,
    )

    rng = np.random.default_rng(seed)
    items = [f"m{n}" for n in range(40)]
    catalogue = ItemCatalogue(items, np.arange(40) % 4 + 1, ["", "a", "b", "c", "d"])
    n = 1500
    users = rng.integers(0, 30, n)
    rows = (users * 3 + rng.integers(0, 12, n)) % 40  # each user prefers a band of items
    log = InteractionLog(
        users=np.array([f"u{u}" for u in users]),
        items=rows.astype(np.int64),
        times=np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)).astype(np.int64),
        catalogue=catalogue,
        labels=(rng.random(n) < 0.6).astype(np.float32),
    )
    data = build_samples(log, SampleOptions(max_history=50))
    options = {"embed_dim": 8, "mlp": (16,), "hashes": 4, "hash_bits": 2, "top_k": 4}
    config = make_config(kind, n_items=40, n_categories=5, options=options)
    train_model(
        data,
        config,
        TrainOptions(epochs=1, batch_size=128, device="cpu", progress=False),
        out,
        seed=seed,
    )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sdim", "dare"])
def test_a_trained_model_serves_and_its_incremental_state_equals_a_rebuild(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    from ranker.ctr import load_model

    model_dir = train_tiny_ctr(tmp_path / kind, kind)
    with build(settings) as c:
        use.install_runtime(c, use.CTRRuntime(c, store=MemoryStateStore()))
        rec = recorder(c)
        out = deploying.deploy(c, model_dir, "real", rebuild=True)
        assert out.deployment.kind == kind and out.job is not None
        deploying.run_rebuild(c, out.job.id)
        use.runtime(c).forget()
        ingest_events(c, [ev("u1", f"m{n}", n) for n in range(6)])
        assert rec.tasks and use.encode_users(c, ["u1"]) == 1
        ingest_events(c, [ev("u1", f"m{n}", n) for n in range(6, 30)])
        use.encode_users(c, ["u1"])
        incremental = state_of(c, out.deployment.version, "u1")
        dep = use.runtime(c).active("real")
        rebuilt = use.refresh_user(c, dep, use.runtime(c).models.get(dep), "u1", full=True)
        assert rebuilt is not None
        for key, value in incremental.state.items():
            assert np.allclose(value, rebuilt.state[key], atol=1e-5), key

        candidates = ["m3", "m17", "m31"]
        got = use.score(c, "u1", candidates, model="real")
        model = load_model(model_dir)
        want = model.score(incremental.state, model.catalogue.rows(candidates))
        assert got.version == model.version and got.kind == kind
        assert got.history_length == 30
        assert np.allclose(got.probabilities, want, atol=1e-6)
        assert ((got.probabilities > 0) & (got.probabilities < 1)).all()
        cold = use.score(c, "nobody", candidates, model="real")
        assert np.allclose(cold.probabilities, model.score(None, model.catalogue.rows(candidates)))
