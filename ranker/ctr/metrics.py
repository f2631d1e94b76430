"""CTR metrics: AUC, GAUC (per-user AUC weighted by impressions) and logloss, in numpy.

AUC is the Mann-Whitney statistic with tied scores counted as half a win (average ranks), so
it equals the area under the ROC curve with ties drawn as diagonal steps. GAUC averages each
user's AUC weighted by that user's number of impressions (samples), over the users who have
both a click and a non-click; the others are skipped (their AUC is undefined).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InvalidRequest

#: Probabilities are clipped to [EPS, 1 - EPS] in the logloss.
EPS = 1e-7


@dataclass(frozen=True)
class UserAUC:
    """Per-user AUCs: ``users`` (the distinct users, sorted), their ``auc`` (NaN where a user
    has one class only) and ``impressions`` (samples per user)."""

    users: np.ndarray
    auc: np.ndarray
    impressions: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.auc)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InvalidRequest(f"{y.size} labels but {s.size} scores")
    if not np.all((y == 0) | (y == 1)):
        raise InvalidRequest("Labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise InvalidRequest("Scores must be finite")
    return y, s


def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> UserAUC:
    """Each user's AUC, computed for all users at once (one sort, no Python loop)."""
    y, s = _check(labels, scores)
    uniq, group = np.unique(np.asarray(users).ravel(), return_inverse=True)
    if group.shape != y.shape:
        raise InvalidRequest(f"{group.size} users but {y.size} labels")
    n = y.size
    if n == 0:
        return UserAUC(uniq, np.zeros(0), np.zeros(0, np.int64))
    order = np.lexsort((s, group))
    g, ss, yy = group[order], s[order], y[order]
    pos = np.arange(n)
    first_of_user = np.r_[True, g[1:] != g[:-1]]
    rank_in_user = pos - np.maximum.accumulate(np.where(first_of_user, pos, 0)) + 1.0
    first_of_tie = first_of_user | np.r_[True, ss[1:] != ss[:-1]]
    tie = np.cumsum(first_of_tie) - 1
    tie_rank = np.bincount(tie, rank_in_user) / np.bincount(tie)
    rank = tie_rank[tie]
    k = len(uniq)
    count = np.bincount(g, minlength=k).astype(np.float64)
    n_pos = np.bincount(g, yy, minlength=k)
    n_neg = count - n_pos
    rank_sum = np.bincount(g, rank * yy, minlength=k)
    auc = np.full(k, np.nan)
    ok = (n_pos > 0) & (n_neg > 0)
    auc[ok] = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return UserAUC(uniq, auc, count.astype(np.int64))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties count half); NaN when only one class is present."""
    y = np.asarray(labels).ravel()
    if y.size == 0:
        return float("nan")
    return float(per_user_auc(np.zeros(y.size, np.int64), y, scores).auc[0])


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes (NaN if none)."""
    per_user = per_user_auc(users, labels, scores)
    ok = per_user.valid
    if not ok.any():
        return float("nan")
    weights = per_user.impressions[ok].astype(np.float64)
    return float(np.sum(per_user.auc[ok] * weights) / weights.sum())


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [EPS, 1 - EPS])."""
    y, p = _check(labels, probs)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def ctr_metrics(users: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``{"auc", "gauc", "logloss", "samples", "positive_rate"}`` of one split's predictions."""
    y = np.asarray(labels, dtype=np.float64)
    return {
        "auc": auc(y, probs),
        "gauc": gauc(users, y, probs),
        "logloss": logloss(y, probs),
        "samples": int(y.size),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
    }
