"""Interaction logs (generic CSV/TSV/Parquet, MovieLens) and the chronological sample builder:
no leakage (ties included), no later-period event in training, labels and negatives."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidRequest
from ranker.ctr import (
    CTRData,
    InteractionLog,
    ItemCatalogue,
    LeakageError,
    LogFormat,
    SampleOptions,
    build_samples,
    check_no_leakage,
    read_log,
    read_movielens,
)
from ranker.ctr.logs import pick_category
from tests.ranker.ctr.conftest import MOVIELENS_ZIP, synthetic_log, write_log_files

FMT = LogFormat(
    user_col="uid",
    item_col="iid",
    time_col="ts",
    rating_col="stars",
    category_col="genres",
)


def crafted_log() -> InteractionLog:
    """Two users; u1 has two events at t=2 (a tie) and a low rating at t=3."""
    rows = [
        # user, item, time, rating
        ("u1", "a", 1, 5.0),
        ("u1", "b", 2, 5.0),
        ("u1", "c", 2, 4.0),
        ("u1", "d", 3, 2.0),
        ("u1", "e", 5, 5.0),
        ("u2", "a", 2, 5.0),
        ("u2", "b", 4, 1.0),
        ("u2", "c", 6, 5.0),
        ("u2", "d", 6, 5.0),
        ("u2", "e", 7, 4.0),
    ]
    catalogue = ItemCatalogue(list("abcde"), np.array([1, 1, 2, 2, 0]), ["", "x", "y"])
    return InteractionLog(
        users=np.array([r[0] for r in rows], dtype=object),
        items=catalogue.rows([r[1] for r in rows]),
        times=np.array([r[2] for r in rows], dtype=np.int64),
        catalogue=catalogue,
        ratings=np.array([r[3] for r in rows]),
    )


def histories(data: CTRData) -> dict[tuple[str, str, int], list[str]]:
    """(user, target item, time) -> history item ids, for every sample."""
    s = data.samples
    out = {}
    for i in range(len(s)):
        key = (str(data.user_ids[s.user[i]]), data.catalogue.item_ids[s.item[i]], int(s.time[i]))
        rows = data.behaviours[s.hist_start[i] : s.hist_end[i]]
        out[key] = [data.catalogue.item_ids[r] for r in rows]
    return out


def test_history_is_strictly_earlier_and_ties_are_left_out() -> None:
    data = build_samples(crafted_log(), SampleOptions(min_history=0, split=(0.5, 0.25, 0.25)))
    h = histories(data)
    assert h[("u1", "a", 1)] == []
    assert h[("u1", "b", 2)] == ["a"]  # c has the same timestamp: not in b's history
    assert h[("u1", "c", 2)] == ["a"]  # nor b in c's
    assert h[("u1", "d", 3)] == ["a", "b", "c"]
    assert h[("u1", "e", 5)] == ["a", "b", "c"]  # d (2 stars) is not a click
    assert h[("u2", "c", 6)] == ["a"] and h[("u2", "d", 6)] == ["a"]
    assert h[("u2", "e", 7)] == ["a", "c", "d"]
    labels = dict(zip(h, data.samples.label.tolist(), strict=True))
    assert labels[("u1", "d", 3)] == 0.0 and labels[("u1", "c", 2)] == 1.0


def test_history_all_keeps_non_clicks_and_max_history_keeps_the_latest() -> None:
    data = build_samples(crafted_log(), SampleOptions(history="all", max_history=2, min_history=0))
    h = histories(data)
    assert h[("u1", "e", 5)] == ["c", "d"]  # the two most recent, oldest first
    assert h[("u2", "b", 4)] == ["a"]


def test_min_history_drops_samples_without_enough_past() -> None:
    data = build_samples(crafted_log(), SampleOptions(min_history=1))
    assert ("u1", "a", 1) not in histories(data)
    assert all(len(v) >= 1 for v in histories(data).values())


def test_time_split_uses_global_quantiles_and_training_sees_no_later_period() -> None:
    log = synthetic_log(n=3000, seed=3)
    data = build_samples(log, SampleOptions(split=(0.8, 0.1, 0.1)))
    t_val, t_test = data.boundaries
    ordered = np.sort(log.times)
    assert t_val == ordered[int(0.8 * len(ordered))]
    assert t_test == ordered[int(0.9 * len(ordered))]
    s = data.samples
    for split, lo, hi in ((0, -np.inf, t_val), (1, t_val, t_test), (2, t_test, np.inf)):
        times = s.time[data.split == split]
        assert len(times) and times.min() >= lo and times.max() < hi
    for i in range(len(s)):
        past = data.behaviour_times[s.hist_start[i] : s.hist_end[i]]
        assert np.all(past < s.time[i])  # strictly earlier: ties excluded
        owners = data.behaviour_users[s.hist_start[i] : s.hist_end[i]]
        assert np.all(owners == s.user[i])
        if data.split[i] == 0:
            assert np.all(past < t_val)  # no validation/test-period event in training
    summary = data.summary()
    assert summary["train"]["samples"] + summary["validation"]["samples"] + summary["test"][
        "samples"
    ] == len(s)


def test_the_leakage_check_catches_a_history_that_reaches_its_target() -> None:
    data = build_samples(synthetic_log(), SampleOptions())
    check_no_leakage(data)
    s = data.samples
    # Stretch one history over the next behaviour of its user, which is not older.
    nxt = np.minimum(s.hist_end, len(data.behaviours) - 1)
    i = int(np.flatnonzero(data.behaviour_users[nxt] == s.user)[0])
    end = s.hist_end.copy()
    end[i] += 1
    bad = dataclasses.replace(data, samples=dataclasses.replace(s, hist_end=end))
    with pytest.raises(LeakageError):
        check_no_leakage(bad)


def test_implicit_labels_sample_popular_negatives_outside_the_users_items() -> None:
    log = synthetic_log(n=300, seed=5)
    data = build_samples(
        log, SampleOptions(label_mode="implicit", negatives=2, history="all", seed=1)
    )
    s = data.samples
    pos, neg = s.label == 1, s.label == 0
    assert neg.sum() == 2 * pos.sum()
    owned = {(u, i) for u, i in zip(log.users, log.items, strict=True)}
    for i in np.flatnonzero(neg):
        assert (data.user_ids[s.user[i]], s.item[i]) not in owned
    # Each negative follows its click with the same user, time and history.
    first_neg = np.flatnonzero(neg)[0]
    assert s.label[first_neg - 1] == 1
    for field in ("user", "time", "hist_start", "hist_end"):
        assert getattr(s, field)[first_neg] == getattr(s, field)[first_neg - 1]
    check_no_leakage(data)


def test_explicit_labels_need_a_rating_or_label() -> None:
    log = dataclasses.replace(crafted_log(), ratings=None)
    with pytest.raises(InvalidRequest, match="--label-mode implicit"):
        build_samples(log)
    labelled = dataclasses.replace(log, labels=np.array([1, 0] * 5, dtype=np.float64))
    assert build_samples(labelled, SampleOptions(min_history=0)).samples.label.sum() == 5


@pytest.mark.parametrize("sep", [",", "\t"])
def test_generic_csv_and_tsv_logs_load_with_column_options(tmp_path: Path, sep: str) -> None:
    log = synthetic_log(n=300)
    inter, items = write_log_files(log, tmp_path, sep)
    read = read_log(inter, items, FMT)
    assert len(read) == 300
    assert read.catalogue.item_ids[: len(log.catalogue)] == log.catalogue.item_ids
    assert read.catalogue.category_names == log.catalogue.category_names  # "cX|x" -> "cX"
    assert np.array_equal(read.catalogue.categories, log.catalogue.categories)
    assert np.array_equal(read.items, log.items) and np.array_equal(read.times, log.times)
    a = build_samples(read)
    b = build_samples(log)
    assert a.fingerprint("test") == b.fingerprint("test")


def test_parquet_logs_and_date_time_stamps(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "user": [1, 1, 2, 2],
            "item": [10, 11, 10, 12],
            "when": ["2024-01-01 10:00", "2024-01-02", "2024-01-01", "2024-01-03"],
            "click": [1, 0, 1, 1],
        }
    )
    path = tmp_path / "log.parquet"
    try:
        frame.to_parquet(path)
    except ImportError:
        pytest.skip("no Parquet engine (pyarrow or fastparquet)")
    log = read_log(path, fmt=LogFormat(time_col="when", label_col="click"))
    assert log.catalogue.item_ids == ["10", "11", "12"]
    assert list(log.labels) == [1, 0, 1, 1]
    assert log.times[0] < log.times[1] and log.times[2] < log.times[0]


def test_missing_columns_and_files_are_named(tmp_path: Path) -> None:
    inter, items = write_log_files(synthetic_log(n=50), tmp_path)
    with pytest.raises(
        InvalidRequest,
        match=r"no column 'user', 'item', 'timestamp'; its columns: uid, iid, ts, stars",
    ):
        read_log(inter, None, LogFormat())
    with pytest.raises(InvalidRequest, match="category column"):
        read_log(inter, items, dataclasses.replace(FMT, category_col=None))
    with pytest.raises(InvalidRequest, match="is not a file"):
        read_log(tmp_path / "nope.csv")


def test_multi_valued_categories_pick_the_configured_value() -> None:
    assert pick_category("Action|Comedy", "|", 0) == "Action"
    assert pick_category("Action|Comedy", "|", -1) == "Comedy"
    assert pick_category("Action", "|", 1) == ""
    assert pick_category("", "|", 0) == ""
    assert pick_category("A|B", None, 0) == "A|B"


@pytest.mark.skipif(not MOVIELENS_ZIP.is_file(), reason="MovieLens-small is not in ../shared/data")
def test_movielens_small_reads_as_is_and_splits_by_time() -> None:
    log = read_movielens(MOVIELENS_ZIP)
    assert len(log) == 100_836 and len(np.unique(log.users)) == 610
    assert len(log.catalogue) == 9_742
    data = build_samples(log)
    summary = data.summary()
    sizes = [summary[k]["samples"] for k in ("train", "validation", "test")]
    assert sizes == [78_851, 10_000, 10_027]  # rating >= 4 clicks, clicked histories
    assert summary["test"]["users"] == 74
    check_no_leakage(data)


def test_without_pandas_the_csv_module_reads_the_same_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = synthetic_log(n=200)
    inter, items = write_log_files(log, tmp_path, "\t")
    with_pandas = read_log(inter, items, FMT)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    without = read_log(inter, items, FMT)
    assert without.catalogue.item_ids == with_pandas.catalogue.item_ids
    for field in ("users", "items", "times", "ratings"):
        assert np.array_equal(getattr(without, field), getattr(with_pandas, field)), field
