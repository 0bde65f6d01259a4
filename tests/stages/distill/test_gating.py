"""Tests of the selection gate and the threshold selection, with hand-computed values."""

from __future__ import annotations

import pytest
import torch

from stages.distill.gating import SelectionGate, masked_softmax, select_teachers


def test_gate_architecture_is_the_papers() -> None:
    gate = SelectionGate(5)
    shapes = [tuple(p.shape) for p in gate.parameters()]
    assert shapes == [(10, 5), (10,), (5, 10), (5,), (5, 5), (5,)]
    assert all(p.dtype == torch.float32 for p in gate.parameters())


def test_gate_probs_sum_to_one_over_present_and_zero_for_absent() -> None:
    torch.manual_seed(0)
    gate = SelectionGate(4)
    scores = torch.tensor([[0.5, 0.2, float("nan"), 0.9], [0.1, 0.1, 0.1, 0.1], [0.3] * 4])
    present = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    probs = gate(scores, present)
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    assert probs[0, 2] == 0 and (probs[2] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.tensor([1.0, 1.0, 0.0]))


def test_gate_stays_fp32_for_bf16_inputs_and_under_autocast() -> None:
    gate = SelectionGate(3)
    scores = torch.rand(2, 3).bfloat16()
    present = torch.ones(2, 3, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = gate(scores, present)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, gate(scores.float(), present))


def test_gate_rejects_wrong_teacher_count() -> None:
    with pytest.raises(ValueError, match="one column per teacher"):
        SelectionGate(3)(torch.rand(2, 4), torch.ones(2, 4, dtype=torch.bool))


def test_gate_over_several_features_per_teacher() -> None:
    """`gate_features: all`: F features per teacher, first layer Linear(K·F, 2K), the rest as ever."""
    torch.manual_seed(0)
    gate = SelectionGate(3, num_features=4)
    assert gate.num_features == 4
    assert [tuple(p.shape) for p in gate.parameters()] == [(6, 12), (6,), (3, 6), (3,), (3, 3), (3,)]
    features = torch.rand(2, 3, 4, requires_grad=True)
    present = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    probs = gate(features, present)
    assert probs.shape == (2, 3) and probs.dtype == torch.float32 and probs[0, 1] == 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    # An absent teacher is fed 0 in every feature: what its features hold (even NaN) is ignored.
    poisoned = features.detach().clone()
    poisoned[0, 1] = float("nan")
    torch.testing.assert_close(gate(poisoned, present), probs.detach())
    zeroed = features.detach().clone()
    zeroed[0, 1] = 0.0
    torch.testing.assert_close(gate(zeroed, present), probs.detach())
    # Gradients reach every layer and every present feature, none the absent teacher's.
    (probs * torch.tensor([[1.0, 0.0, 3.0], [0.5, 2.0, 1.0]])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())
    assert (features.grad[0, 1] == 0).all() and (features.grad[0, [0, 2]] != 0).all()


def test_one_feature_gate_takes_b_k_or_b_k_1() -> None:
    gate = SelectionGate(3)
    scores, present = torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(gate(scores.unsqueeze(-1), present), gate(scores, present))


def test_gate_rejects_wrong_feature_count() -> None:
    with pytest.raises(ValueError, match=r"4 feature\(s\) each, got shape \(2, 3, 1\).*gate_features"):
        SelectionGate(3, num_features=4)(torch.rand(2, 3, 1), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one feature"):
        SelectionGate(3, num_features=0)


def test_reset_parameters_is_reproducible_from_a_generator() -> None:
    first, second = SelectionGate(3), SelectionGate(3)
    first.reset_parameters(torch.Generator().manual_seed(7))
    second.reset_parameters(torch.Generator().manual_seed(7))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_masked_softmax_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(masked_softmax(logits, mask), torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_selection_thresholds_and_renormalises() -> None:
    gate = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    expected = torch.tensor([[0.5, 0.3, 0.0, 0.0]]) / (0.8 + 1e-8)
    torch.testing.assert_close(select_teachers(gate, tau=0.15), expected)


def test_selection_keeps_the_argmax_when_all_below_tau() -> None:
    gate = torch.tensor([[0.14, 0.12, 0.10] + [0.64 / 8] * 8])
    weights = select_teachers(gate, tau=0.15)
    assert weights[0, 0].item() == pytest.approx(1.0)
    assert (weights[0, 1:] == 0).all()


def test_selection_weights_sum_to_one_and_zero_row_stays_zero() -> None:
    gate = torch.softmax(torch.randn(6, 5), dim=-1)
    gate = torch.cat([gate, torch.zeros(1, 5)])
    weights = select_teachers(gate, tau=0.15)
    torch.testing.assert_close(weights.sum(-1), torch.tensor([1.0] * 6 + [0.0]))
    assert torch.isfinite(weights).all()
