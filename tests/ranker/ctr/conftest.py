"""A seeded synthetic interaction log for the CTR tests: users prefer one category, so a
model that reads the history can beat chance. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ranker.ctr import InteractionLog, ItemCatalogue

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
MOVIELENS_ZIP = SHARED_DATA / "movielens-small" / "ml-latest-small.zip"

N_ITEMS = 40
N_CATEGORIES = 4


def synthetic_log(n_users: int = 30, n: int = 1500, seed: int = 0) -> InteractionLog:
    """``n`` ratings of ``N_ITEMS`` items in ``N_CATEGORIES`` categories by ``n_users`` users;
    a user rates items of their favourite category high. Timestamps repeat (ties)."""
    rng = np.random.default_rng(seed)
    items = [f"m{i}" for i in range(N_ITEMS)]
    categories = np.arange(N_ITEMS) % N_CATEGORIES + 1
    names = ["", *(f"c{c}" for c in range(N_CATEGORIES))]
    users = rng.integers(0, n_users, n)
    rows = rng.integers(0, N_ITEMS, n)
    liked = categories[rows] == users % N_CATEGORIES + 1
    ratings = np.where(liked, 4.0 + rng.integers(0, 2, n), 1.0 + rng.integers(0, 3, n))
    noise = rng.random(n) < 0.1
    ratings[noise] = 6.0 - ratings[noise]
    times = np.sort(rng.integers(0, n // 3, n)).astype(np.int64)  # about three events a tick
    return InteractionLog(
        users=np.array([f"u{u}" for u in users], dtype=object),
        items=rows.astype(np.int64),
        times=times,
        catalogue=ItemCatalogue(items, categories, names),
        ratings=ratings.astype(np.float64),
    )


@pytest.fixture(scope="session")
def tiny_log() -> InteractionLog:
    return synthetic_log()


def write_log_files(log: InteractionLog, folder: Path, sep: str = ",") -> tuple[Path, Path]:
    """``log`` as an interactions file and an items file (multi-valued genres "cX|other")."""
    suffix = ".tsv" if sep == "\t" else ".csv"
    inter = folder / f"interactions{suffix}"
    lines = [sep.join(["uid", "iid", "ts", "stars"])]
    for u, i, t, r in zip(log.users, log.items, log.times, log.ratings, strict=True):
        lines.append(sep.join([str(u), log.catalogue.item_ids[i], str(t), f"{r:g}"]))
    inter.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = folder / f"items{suffix}"
    rows = [sep.join(["iid", "title", "genres"])]
    for item, cat in zip(log.catalogue.item_ids, log.catalogue.categories, strict=True):
        rows.append(sep.join([item, f"title of {item}", f"{log.catalogue.category_names[cat]}|x"]))
    items.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return inter, items
