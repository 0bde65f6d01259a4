"""Chunk-level likelihood matching: the gradient against finite differences and against its
closed form (1 − u/v)·∇CE per chunk, zero when the teacher is the student, a mixture of identical
teachers equal to one, the student's σ by hand, and nothing (never NaN) without chunks."""

from __future__ import annotations

import math

import pytest
import torch

from stages.distill.chunk_loss import (
    binary_chunk_ce,
    chunk_distillation_loss,
    log1mexp,
    mixture_chunk_loglik,
    space_rows,
    student_chunk_loglik,
    student_space_logprob,
)
from stages.distill.losses import student_normaliser

B, T, V, S, K = 2, 6, 7, 3, 2


def example(dtype=torch.float64, seed: int = 0):
    """Random logits; sample 0 has 3 chunks (rows 1-2, 3, 4), sample 1 has 2 (rows 0-1, 2-4)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen, dtype=dtype)
    next_ids = torch.randint(0, V, (B, T), generator=gen)
    row_chunk = torch.tensor([[-1, 0, 0, 1, 2, -1], [0, 0, 1, 1, 1, -1]])
    chunk_mask = torch.tensor([[True, True, True], [True, True, False]])
    teacher = -torch.rand(B, K, S, generator=gen, dtype=dtype) * 4
    present = torch.tensor([[True, True], [False, True]])
    weights = torch.tensor([[0.3, 0.7], [0.0, 1.0]], dtype=dtype)
    return logits, next_ids, row_chunk, chunk_mask, teacher, present, weights


def next_logprobs_of(logits: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)


def loss_of(logits, next_ids, row_chunk, chunk_mask, teacher, present, weights, temperature=100.0):
    return chunk_distillation_loss(
        next_logprobs_of(logits, next_ids), row_chunk, chunk_mask, teacher, weights, present, temperature
    )


def test_log1mexp_matches_high_precision_on_both_sides_of_log_half() -> None:
    import mpmath

    mpmath.mp.dps = 50
    points = [-50.0, -3.0, -0.7, -0.69, -1e-3, -1e-9]
    expected = [float(mpmath.log(1 - mpmath.exp(mpmath.mpf(x)))) for x in points]
    got = log1mexp(torch.tensor(points, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_gradient_matches_finite_differences() -> None:
    logits, *rest = example()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss_of(z, *rest, temperature=3.0)[0], (logits,), eps=1e-6)


@pytest.mark.parametrize("tau", [3.0, 100.0, 1e4])
def test_gradient_is_the_chunk_cross_entropy_reweighted(tau: float) -> None:
    logits, next_ids, row_chunk, chunk_mask, teacher, present, weights = example()
    logits.requires_grad_(True)
    loss, _, rows = loss_of(logits, next_ids, row_chunk, chunk_mask, teacher, present, weights, tau)
    (got,) = torch.autograd.grad(loss, logits)
    # d(τ·BCE)/dℓ_S = (1 − y)·x/(1 − x) − y: the chunk's CE gradient (CE_c = −ℓ_S(c)) times
    # y − (1 − y)·x/(1 − x), which tends to 1 − u/v (u = −ℓ_T, v = −ℓ_S) as τ grows.
    student = student_chunk_loglik(next_logprobs_of(logits, next_ids), row_chunk, S)
    mixture = mixture_chunk_loglik(teacher, weights, present).detach()
    log_x, log_y = student.detach() / tau - 1e-6, mixture / tau - 1e-6
    x, y = log_x.exp(), log_y.exp()
    factor = torch.where(chunk_mask, y - (1 - y) * x / (1 - x), 0.0)
    (expected,) = torch.autograd.grad((factor * -student).sum() / rows, logits)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    assert rows == 9  # the rows inside real chunks (4 + 5)
    if tau == 1e4:
        limit = torch.where(chunk_mask, 1 - mixture / student.detach(), 0.0)
        torch.testing.assert_close(factor, limit, rtol=2e-2, atol=1e-3)


def test_teacher_equal_to_the_student_gives_zero_gradient() -> None:
    logits, next_ids, row_chunk, chunk_mask, _, _, _ = example()
    logits.requires_grad_(True)
    own = student_chunk_loglik(next_logprobs_of(logits, next_ids), row_chunk, S).detach()
    teacher = own.unsqueeze(1).expand(B, K, S)
    present = torch.ones(B, K, dtype=torch.bool)
    weights = torch.full((B, K), 0.5, dtype=torch.float64)
    loss, _, _ = loss_of(logits, next_ids, row_chunk, chunk_mask, teacher, present, weights)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().max() < 1e-12


def test_a_mixture_of_identical_teachers_equals_one_teacher() -> None:
    logits, next_ids, row_chunk, chunk_mask, teacher, _, _ = example()
    same = teacher[:, :1].expand(B, 3, S)
    mixed = loss_of(
        logits,
        next_ids,
        row_chunk,
        chunk_mask,
        same,
        torch.ones(B, 3, dtype=torch.bool),
        torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]], dtype=torch.float64),
    )[0]
    alone = loss_of(
        logits,
        next_ids,
        row_chunk,
        chunk_mask,
        teacher[:, :1],
        torch.ones(B, 1, dtype=torch.bool),
        torch.ones(B, 1, dtype=torch.float64),
    )[0]
    torch.testing.assert_close(mixed, alone)


def test_absent_and_zero_weight_teachers_drop_out_of_the_mixture() -> None:
    teacher = torch.tensor([[[-1.0], [-50.0]]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    present = torch.tensor([[True, True]])
    torch.testing.assert_close(
        mixture_chunk_loglik(teacher, weights, present), torch.tensor([[-1.0]], dtype=torch.float64)
    )
    half = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    expected = math.log(0.5 * math.exp(-1.0) + 0.5 * math.exp(-50.0))
    assert float(mixture_chunk_loglik(teacher, half, present)) == pytest.approx(expected)


def test_no_chunk_gives_zero_with_a_grad_path() -> None:
    logits, next_ids, _, _, teacher, present, weights = example(torch.float32)
    logits.requires_grad_(True)
    loss, chunks, rows = loss_of(
        logits,
        next_ids,
        torch.full((B, T), -1),
        torch.zeros(B, S, dtype=torch.bool),
        teacher.float(),
        present,
        weights.float(),
    )
    loss.backward()
    assert loss.item() == 0.0 and int(chunks) == 0 and int(rows) == 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_binary_ce_is_finite_at_certainty() -> None:
    zero = torch.zeros(3)
    value = binary_chunk_ce(torch.tensor([0.0, -1.0, -1e-9]), zero, 100.0)
    assert torch.isfinite(value).all()


def test_student_space_logprob_by_hand() -> None:
    logits, *_ = example()
    mask = torch.tensor([True, False, True, False, False, False, True])
    end_row = torch.tensor([[2, -1, 4], [0, 5, -1]])
    index = torch.zeros(*logits.shape[:-1], 0, dtype=torch.int64)
    lse, _, space_lse = student_normaliser(logits, index, space_rows(end_row, logits.shape[1]), mask)
    got = student_space_logprob(space_lse, lse, end_row)
    probs = torch.softmax(logits, -1)[..., mask].sum(-1)  # [B, T]
    expected = torch.tensor(
        [
            [math.log(probs[0, 2]), 0.0, math.log(probs[0, 4])],
            [math.log(probs[1, 0]), math.log(probs[1, 5]), 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, expected)
