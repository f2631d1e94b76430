"""InfoNCE with in-batch and hard negatives, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from embedder.train.loss import DEFAULT_TEMPERATURE, info_nce_loss

# Two queries, their positives and one shared hard negative, in 2-d. Lengths differ on
# purpose: the loss compares directions (cosine), not raw dot products.
Q = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
P = torch.tensor([[4.0, 3.0], [0.3, 0.4]])
N = torch.tensor([[0.6, -0.8]])
# Cosines with the candidates [p1, p2, n1]: q1 → [0.8, 0.6, 0.6], q2 → [0.6, 0.8, -0.8].
COSINES = [[0.8, 0.6, 0.6], [0.6, 0.8, -0.8]]


def _by_hand(temperature: float, cosines: list[list[float]] = COSINES) -> float:
    losses = []
    for i, row in enumerate(cosines):
        exps = [math.exp(c / temperature) for c in row]
        losses.append(-math.log(exps[i] / sum(exps)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("temperature", [1.0, 0.5, DEFAULT_TEMPERATURE])
def test_matches_hand_computed_value(temperature: float) -> None:
    loss = info_nce_loss(Q, P, N, temperature=temperature)
    assert loss.item() == pytest.approx(_by_hand(temperature), rel=1e-5)


def test_default_temperature_scales_cosines_by_20() -> None:
    assert DEFAULT_TEMPERATURE == 0.05
    # Only in-batch negatives: each query sees [0.8, 0.6] → -log(e^16 / (e^16 + e^12)).
    expected = -math.log(math.exp(16) / (math.exp(16) + math.exp(12)))
    assert expected == pytest.approx(_by_hand(1 / 20, [[0.8, 0.6], [0.6, 0.8]]))
    assert info_nce_loss(Q, P).item() == pytest.approx(expected, rel=1e-5)


def test_negatives_may_be_grouped_per_query() -> None:
    negatives = torch.tensor([[[-1.0, 0.0]], [[0.0, -2.0]]])  # (B, n, d)
    flat = negatives.reshape(-1, 2)
    torch.testing.assert_close(
        info_nce_loss(Q, P, negatives, temperature=1.0),
        info_nce_loss(Q, P, flat, temperature=1.0),
    )


def test_excluded_candidates_leave_the_softmax() -> None:
    exclude = torch.tensor([[False, False, False], [False, False, True]])
    loss = info_nce_loss(Q, P, N, temperature=1.0, exclude=exclude)
    loss1 = -math.log(math.exp(0.8) / (math.exp(0.8) + 2 * math.exp(0.6)))
    loss2 = -math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8)))  # n1 left out for q2
    assert loss.item() == pytest.approx((loss1 + loss2) / 2, rel=1e-6)


def test_gradient_flows_to_queries_and_documents() -> None:
    q, p, n = (t.clone().requires_grad_() for t in (Q, P, N))
    info_nce_loss(q, p, n, temperature=1.0).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, p, n))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(Q, P, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        info_nce_loss(Q, P[:1])
    with pytest.raises(ValueError, match="width"):
        info_nce_loss(Q, P, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="own positive"):
        info_nce_loss(Q, P, exclude=torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="exclude must be"):
        info_nce_loss(Q, P, N, exclude=torch.zeros(2, 2, dtype=torch.bool))
