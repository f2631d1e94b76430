"""AUC, GAUC and logloss against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import InvalidRequest
from ranker.ctr import auc, ctr_metrics, gauc, logloss, per_user_auc


def test_auc_counts_tied_scores_as_half() -> None:
    # Pairs (pos, neg): (0.9, 0.1) win, (0.9, 0.4) win, (0.4, 0.1) win, (0.4, 0.4) tie.
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.4])) == pytest.approx(3.5 / 4)
    assert auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3])) == 0.0
    assert math.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users() -> None:
    users = np.array(["a", "a", "b", "b", "b", "c", "c"])
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.1, 0.5, 0.6])
    # a: AUC 1 over 2 impressions; b: 0.2 beats 0.1 not 0.3 -> 0.5 over 3; c: one class.
    assert gauc(users, labels, scores) == pytest.approx((2 * 1.0 + 3 * 0.5) / 5)
    per_user = per_user_auc(users, labels, scores)
    assert per_user.users.tolist() == ["a", "b", "c"]
    assert per_user.impressions.tolist() == [2, 3, 2]
    assert per_user.auc[:2].tolist() == [1.0, 0.5] and math.isnan(per_user.auc[2])


def test_logloss_and_the_metric_bundle() -> None:
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(expected)
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    out = ctr_metrics(np.array([1, 1]), np.array([1, 0]), np.array([0.8, 0.4]))
    assert out["auc"] == 1.0 and out["gauc"] == 1.0 and out["samples"] == 2
    assert out["logloss"] == pytest.approx(expected) and out["positive_rate"] == 0.5


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="0 or 1"):
        auc(np.array([2, 0]), np.array([0.1, 0.2]))
    with pytest.raises(InvalidRequest, match="labels but"):
        logloss(np.array([1, 0]), np.array([0.1]))
