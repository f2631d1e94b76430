"""Chronological CTR samples from an interaction log, with a time-based split and no leakage.

Every interaction becomes a sample: the **target** is its item, the **history** is the
user's behaviours *strictly before* its timestamp (oldest first, at most ``max_history``, the
most recent kept). Behaviours with the same timestamp as the target are left out of its
history, so ties never leak. Which behaviours count as history is an option: ``positive``
(the clicked ones, as the DIN/SDIM/DARE papers build their sequences; default) or ``all``.

**Labels.** ``explicit`` (default): a 0/1 label column, or a rating with ``rating >=
threshold`` as a click (MovieLens: 4 stars). ``implicit``: every interaction is a click, and
``negatives`` non-clicks per click are drawn by item popularity in the training period
(never one of the user's own items), sharing the click's user, time and history.

**Split.** Global timestamp quantiles: with fractions (0.8, 0.1, 0.1), ``t_val`` and
``t_test`` are the interaction times at the 80% and 90% positions of all interactions, and a
sample goes to train when its time is ``< t_val``, to validation when ``< t_test``, else to
test. A history only holds events strictly older than its target, so no validation- or
test-period event reaches a training sample; validation and test histories do include the
earlier periods (the user's real past). :func:`check_no_leakage` asserts both, and the
builder runs it on every dataset it returns.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from core.errors import InvalidRequest, QuarryError
from ranker.ctr.catalogue import ItemCatalogue
from ranker.ctr.logs import InteractionLog

logger = logging.getLogger(__name__)

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
LABEL_MODES = ("explicit", "implicit")
HISTORY_MODES = ("positive", "all")


class LeakageError(QuarryError):
    """A sample's history holds an event at or after its target's time (a builder bug)."""

    code = "ctr_leakage"
    status = 500


@dataclass(frozen=True)
class SampleOptions:
    """How samples are built (see the module docstring)."""

    label_mode: str = "explicit"
    threshold: float = 4.0
    negatives: int = 1
    history: str = "positive"
    max_history: int = 1000
    min_history: int = 1
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise InvalidRequest(
                f"Unknown label mode {self.label_mode!r}. Valid modes: {', '.join(LABEL_MODES)}"
            )
        if self.history not in HISTORY_MODES:
            raise InvalidRequest(
                f"Unknown history mode {self.history!r}. Valid modes: {', '.join(HISTORY_MODES)}"
            )
        if self.max_history < 1 or self.min_history < 0 or self.negatives < 1:
            raise InvalidRequest("max_history and negatives must be >= 1, min_history >= 0")
        if self.min_history > self.max_history:
            raise InvalidRequest("min_history cannot exceed max_history")
        fractions = tuple(float(f) for f in self.split)
        if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0:
            raise InvalidRequest(f"split needs three fractions (train > 0), got {self.split!r}")
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise InvalidRequest(f"split fractions must sum to 1, got {self.split!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["split"] = list(self.split)
        return out


@dataclass(frozen=True)
class SampleSet:
    """Samples as parallel arrays; the history of sample ``i`` is
    ``behaviours[hist_start[i]:hist_end[i]]`` of its :class:`CTRData`."""

    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    time: np.ndarray
    hist_start: np.ndarray
    hist_end: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    @property
    def history_length(self) -> np.ndarray:
        return self.hist_end - self.hist_start

    def take(self, index: np.ndarray) -> SampleSet:
        return SampleSet(**{k: v[index] for k, v in asdict(self).items()})


@dataclass
class CTRData:
    """A built dataset: the catalogue, every user's behaviour sequence (one flat array,
    grouped by user, oldest first, with their times and users), the samples and which split
    each sample is in."""

    catalogue: ItemCatalogue
    user_ids: np.ndarray
    behaviours: np.ndarray
    behaviour_times: np.ndarray
    behaviour_users: np.ndarray
    samples: SampleSet
    split: np.ndarray
    boundaries: tuple[Any, Any]
    options: SampleOptions
    source: dict[str, Any] = field(default_factory=dict)

    def part(self, name: SplitName) -> SampleSet:
        """The samples of one split (``train``, ``validation`` or ``test``)."""
        if name not in SPLITS:
            raise InvalidRequest(f"Unknown split {name!r}. Valid splits: {', '.join(SPLITS)}")
        return self.samples.take(np.flatnonzero(self.split == SPLITS.index(name)))

    def summary(self) -> dict[str, Any]:
        """Sizes of the splits (samples, users, click rate, history lengths) and boundaries."""
        out: dict[str, Any] = {
            "users": len(self.user_ids),
            "items": len(self.catalogue),
            "categories": self.catalogue.n_categories - 1,
            "behaviours": len(self.behaviours),
            "boundaries": [_plain(b) for b in self.boundaries],
        }
        for name in SPLITS:
            part = self.part(name)
            lengths = part.history_length
            out[name] = {
                "samples": len(part),
                "users": len(np.unique(part.user)),
                "positive_rate": float(part.label.mean()) if len(part) else None,
                "history_mean": float(lengths.mean()) if len(part) else None,
                "history_max": int(lengths.max()) if len(part) else None,
            }
        return out

    def fingerprint(self, name: SplitName = "test") -> str:
        """A hash of one split's samples (user, item, label, time): equal splits, equal hash."""
        part = self.part(name)
        digest = hashlib.sha256()
        for arr in (self.user_ids[part.user].astype(str), part.item, part.label, part.time):
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()[:16]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _labels(log: InteractionLog, options: SampleOptions) -> np.ndarray:
    if options.label_mode == "implicit":
        return np.ones(len(log), dtype=np.float32)
    if log.labels is not None:
        if np.isnan(log.labels).any():
            raise InvalidRequest("The label column has empty values")
        return (log.labels > 0).astype(np.float32)
    if log.ratings is not None:
        if np.isnan(log.ratings).any():
            raise InvalidRequest("The rating column has empty values")
        return (log.ratings >= options.threshold).astype(np.float32)
    raise InvalidRequest(
        "Explicit labels need a rating column (--rating-col) or a label column (--label-col); "
        "for a log of positives only use --label-mode implicit"
    )


def _boundaries(times: np.ndarray, split: tuple[float, float, float]) -> tuple[Any, Any]:
    """The times at the train and train+validation quantile positions (actual event times)."""
    ordered = np.sort(times, kind="stable")
    n = len(ordered)
    first = ordered[min(n - 1, int(np.floor(split[0] * n)))]
    cut = split[0] + split[1]
    second = ordered[min(n - 1, int(np.floor(cut * n)))] if cut < 1.0 else None
    if second is None:
        # No test split: a boundary above every event.
        second = ordered[-1] + (1 if ordered.dtype.kind in "iu" else 1.0)
    return first, second


def _negatives(
    user: np.ndarray,
    times: np.ndarray,
    items: np.ndarray,
    per_user_items: np.ndarray,
    n_items: int,
    boundary: Any,
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` popularity-sampled items for each sample user, avoiding the user's items."""
    train = items[times < boundary]
    popularity = np.bincount(train if len(train) else items, minlength=n_items).astype(np.float64)
    popularity /= popularity.sum()
    draws = rng.choice(n_items, size=(len(user), count), p=popularity)
    own = np.unique(per_user_items)  # sorted keys user * n_items + item
    users = np.repeat(user[:, None], count, axis=1)
    for _ in range(20):
        hit = np.isin(users * n_items + draws, own)
        if not hit.any():
            break
        draws[hit] = rng.choice(n_items, size=int(hit.sum()), p=popularity)
    else:
        hit = np.isin(users * n_items + draws, own)
        if hit.any():
            # Users who touched nearly every popular item: a few negatives stay their own.
            logger.warning("%d sampled negatives are items their user interacted with", hit.sum())
    return draws


def build_samples(log: InteractionLog, options: SampleOptions | None = None) -> CTRData:
    """Chronological samples of ``log`` with a time-based split (see the module docstring)."""
    options = options or SampleOptions()
    if len(log) == 0:
        raise InvalidRequest("The log has no interactions")
    user_ids, user = np.unique(log.users.astype(str), return_inverse=True)
    user = user.astype(np.int64)
    times = log.times
    _, time_rank = np.unique(times, return_inverse=True)
    time_rank = time_rank.astype(np.int64)
    span = int(time_rank.max()) + 2
    # Events by (user, time), file order among ties (lexsort is stable).
    order = np.lexsort((time_rank, user))
    labels = _labels(log, options)

    is_behaviour = labels[order] > 0 if options.history == "positive" else np.ones(len(log), bool)
    hist_events = order[is_behaviour]
    behaviours = log.items[hist_events]
    behaviour_times = times[hist_events]
    behaviour_key = user[hist_events] * span + time_rank[hist_events]

    key = user * span + time_rank
    end = np.searchsorted(behaviour_key, key, side="left")
    user_first = np.searchsorted(behaviour_key, user * span, side="left")
    start = np.maximum(user_first, end - options.max_history)
    keep = (end - user_first) >= options.min_history
    events = order[keep[order]]  # samples in (user, time) order

    first, second = _boundaries(times, options.split)
    samples = SampleSet(
        user=user[events],
        item=log.items[events],
        label=labels[events],
        time=times[events],
        hist_start=start[events],
        hist_end=end[events],
    )
    if options.label_mode == "implicit":
        rng = np.random.default_rng(options.seed)
        n_items = len(log.catalogue)
        negatives = _negatives(
            samples.user,
            times,
            log.items,
            user * n_items + log.items,
            n_items,
            first,
            options.negatives,
            rng,
        )
        k = options.negatives
        rep = np.repeat(np.arange(len(samples)), k)
        neg = samples.take(rep)
        neg = SampleSet(
            user=neg.user,
            item=negatives.ravel(),
            label=np.zeros(len(rep), np.float32),
            time=neg.time,
            hist_start=neg.hist_start,
            hist_end=neg.hist_end,
        )
        # Each click followed by its negatives, so a user's samples stay in time order.
        slot = np.concatenate(
            [
                np.arange(len(samples)) * (k + 1),
                rep * (k + 1) + 1 + np.tile(np.arange(k), len(samples)),
            ]
        )
        merged = np.argsort(slot, kind="stable")
        samples = SampleSet(
            **{
                name: np.concatenate([getattr(samples, name), getattr(neg, name)])[merged]
                for name in asdict(samples)
            }
        )
    split = np.where(samples.time < first, 0, np.where(samples.time < second, 1, 2)).astype(np.int8)
    data = CTRData(
        catalogue=log.catalogue,
        user_ids=user_ids,
        behaviours=behaviours,
        behaviour_times=behaviour_times,
        behaviour_users=user[hist_events],
        samples=samples,
        split=split,
        boundaries=(first, second),
        options=options,
        source=dict(log.source),
    )
    check_no_leakage(data)
    summary = data.summary()
    logger.info(
        "CTR samples: train %d, validation %d, test %d (test users %d)",
        summary["train"]["samples"],
        summary["validation"]["samples"],
        summary["test"]["samples"],
        summary["test"]["users"],
    )
    return data


def check_no_leakage(data: CTRData) -> None:
    """Raise :class:`LeakageError` unless every history is the sample user's own behaviours,
    strictly older than its target, and no training sample holds a later-period event."""
    s = data.samples
    has = s.hist_end > s.hist_start
    if not has.any():
        return
    last = s.hist_end[has] - 1
    first = s.hist_start[has]
    if np.any(data.behaviour_times[last] >= s.time[has]):
        raise LeakageError("A history holds a behaviour at or after its target's time")
    # The flat array is grouped by user: a run whose two ends are the user's is all theirs.
    owners = data.behaviour_users
    if np.any(owners[first] != s.user[has]) or np.any(owners[last] != s.user[has]):
        raise LeakageError("A history holds another user's behaviour")
    if np.any(np.diff(owners) < 0):
        raise LeakageError("Behaviours are not grouped by user")
    train = has & (data.split == 0)
    if train.any() and np.any(data.behaviour_times[s.hist_end[train] - 1] >= data.boundaries[0]):
        raise LeakageError("A training sample's history holds a validation/test-period event")
    if np.any(s.time[data.split == 0] >= data.boundaries[0]):
        raise LeakageError("A training sample's target is in the validation/test period")
