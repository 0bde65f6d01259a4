"""The `likelihood` gate objective: a hand-computed value, and what a gate trained by it learns —
the teacher that knows the text, the specialist of each domain, and nothing from identical teachers."""

from __future__ import annotations

import math

import torch

from stages.distill.gate_objective import mixture_span_nll
from stages.distill.gating import SelectionGate, select_teachers

TAU = 0.15


def test_hand_computed_value() -> None:
    weights = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    span_loglik = torch.log(
        torch.tensor([[[0.5, 0.2], [0.1, 0.4], [0.9, 0.9]], [[0.3, 7.0], [0.6, 0.6], [1, 1]]])
    )
    span_mask = torch.tensor([[True, True], [True, False]])  # sample 1 has one span
    present = torch.tensor([[True, True, False], [True, True, True]])
    # Sample 0: teacher 2 is absent (its 0.9 counts for nothing); sample 1: only teacher 0 has weight.
    sample0 = math.log(0.25 * 0.5 + 0.75 * 0.1) + math.log(0.25 * 0.2 + 0.75 * 0.4)
    sample1 = math.log(0.3)
    expected = -(sample0 + sample1) / 2
    got = mixture_span_nll(weights, span_loglik, span_mask, present)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected))
    # Per byte of the spans (training's unit): each sample's NLL over its own bytes; none: 0.
    per_byte = mixture_span_nll(weights, span_loglik, span_mask, present, torch.tensor([8, 3]))
    torch.testing.assert_close(per_byte, torch.tensor(-(sample0 / 8 + sample1 / 3) / 2))
    no_bytes = mixture_span_nll(weights, span_loglik, span_mask, present, torch.tensor([8, 0]))
    torch.testing.assert_close(no_bytes, torch.tensor(-(sample0 / 8) / 2))


def test_empty_rows_give_zero_and_finite_gradients() -> None:
    weights = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.5, 0.5]], requires_grad=True)
    span_loglik = torch.tensor(
        [[[-1.0, -2.0], [-3.0, -4.0]], [[-1.0, -1.0], [-1.0, -1.0]], [[-1.0, 0.0], [-2.0, 0.0]]]
    )
    span_mask = torch.tensor([[True, True], [True, True], [False, False]])
    present = torch.tensor([[True, True], [False, False], [True, True]])
    loss = mixture_span_nll(weights, span_loglik, span_mask, present)
    # Sample 0: teacher 1 alone (teacher 0 unselected, w = 0); sample 1: no teacher; sample 2: no span.
    torch.testing.assert_close(loss, torch.tensor(7.0 / 3))
    loss.backward()
    assert torch.isfinite(weights.grad).all()
    assert weights.grad[0, 0] == 0 and (weights.grad[1:] == 0).all()


def train_gate(features: torch.Tensor, span_loglik: torch.Tensor, steps: int = 150) -> SelectionGate:
    """A fresh gate trained by the likelihood objective alone on fixed features and spans."""
    torch.manual_seed(0)
    batch, teachers = span_loglik.shape[:2]
    gate = SelectionGate(teachers, features.shape[-1])
    present = torch.ones(batch, teachers, dtype=torch.bool)
    span_mask = torch.ones(batch, span_loglik.shape[-1], dtype=torch.bool)
    optimizer = torch.optim.Adam(gate.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        weights = select_teachers(gate(features, present), TAU)
        mixture_span_nll(weights, span_loglik, span_mask, present).backward()
        optimizer.step()
    return gate


def weights_of(gate: SelectionGate, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        present = torch.ones(features.shape[:2], dtype=torch.bool)
        return select_teachers(gate(features, present), TAU)


def test_a_teacher_better_on_every_span_takes_all_the_weight() -> None:
    gen = torch.Generator().manual_seed(1)
    batch, spans = 8, 6
    features = torch.rand(batch, 3, 1, generator=gen)
    worse = -torch.rand(batch, 3, spans, generator=gen) * 4 - 1  # every span in (−5, −1)
    # Teacher 1 is the best on every span, whatever the features say.
    span_loglik = worse.clone()
    span_loglik[:, 1] = worse.max(dim=1).values + 0.5
    before = weights_of(SelectionGate(3), features)
    assert (before[:, 1] < 0.9).all()
    weights = weights_of(train_gate(features, span_loglik), features)
    assert (weights[:, 1] > 0.99).all(), weights


def test_two_domain_specialists_are_routed_by_domain() -> None:
    # Features: the sample's domain, one-hot, the same for both teachers (F = 2). Teacher 0 knows
    # domain 0 (code), teacher 1 domain 1 (prose); each is poor on the other's domain.
    domain = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    one_hot = torch.nn.functional.one_hot(domain, 2).float()
    features = one_hot.unsqueeze(1).expand(-1, 2, -1).contiguous()  # [B, K=2, F=2]
    gen = torch.Generator().manual_seed(2)
    good, poor = -torch.rand(8, 5, generator=gen) - 0.5, -torch.rand(8, 5, generator=gen) - 3.0
    specialist = torch.stack([domain == 0, domain == 1], dim=1)  # [B, K]: teacher k knows b's domain
    span_loglik = torch.where(specialist.unsqueeze(-1), good.unsqueeze(1), poor.unsqueeze(1))
    weights = weights_of(train_gate(features, span_loglik), features)
    routed = weights[torch.arange(8), domain]
    assert (routed > 0.99).all(), weights


def test_identical_teachers_stay_uniform() -> None:
    gen = torch.Generator().manual_seed(3)
    span_loglik = (-torch.rand(6, 1, 4, generator=gen) * 3).expand(-1, 3, -1).contiguous()
    features = torch.rand(6, 3, 1, generator=gen)
    # A gate that starts uniform (its last layer's output is flat) gets no gradient at all:
    # the mixture of identical teachers is the same whatever the weights.
    gate = SelectionGate(3)
    with torch.no_grad():
        gate.layers[-1].weight.zero_()
        gate.layers[-1].bias.zero_()
    present = torch.ones(6, 3, dtype=torch.bool)
    weights = select_teachers(gate(features, present), TAU)
    torch.testing.assert_close(weights, torch.full((6, 3), 1 / 3))
    mixture_span_nll(weights, span_loglik, torch.ones(6, 4, dtype=torch.bool), present).backward()
    for parameter in gate.parameters():
        torch.testing.assert_close(parameter.grad, torch.zeros_like(parameter), atol=1e-6, rtol=0)
    # And the gradient with respect to w is the same for every teacher at any weights: it only
    # moves along the constraint Σ w = 1, which the softmax removes.
    w = torch.tensor([[0.2, 0.3, 0.5]] * 6, requires_grad=True)
    mixture_span_nll(w, span_loglik, torch.ones(6, 4, dtype=torch.bool), present).backward()
    torch.testing.assert_close(w.grad, w.grad[:, :1].expand(-1, 3))


def test_one_present_teacher_is_a_constant() -> None:
    gate = SelectionGate(2)
    features = torch.rand(3, 2, 1)
    present = torch.tensor([[True, False]] * 3)
    span_loglik = -torch.rand(3, 2, 4)
    weights = select_teachers(gate(features, present), TAU)
    loss = mixture_span_nll(weights, span_loglik, torch.ones(3, 4, dtype=torch.bool), present)
    torch.testing.assert_close(loss, -span_loglik[:, 0].sum() / 3, atol=1e-5, rtol=0)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in gate.parameters())
