"""Analytic tests of the log-normaliser, the CLM loss, the feedback loss and the total."""

from __future__ import annotations

import math

import pytest
import torch

from stages.distill.losses import (
    clm_loss,
    feedback_loss,
    importance,
    position_logsumexp,
    student_normaliser,
)


@pytest.mark.parametrize("chunk_elements", [1, 7 * 5, 1 << 24])
def test_chunked_logsumexp_matches_torch_value_and_grad(chunk_elements: int) -> None:
    logits = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 7, dtype=torch.float64)
    got = position_logsumexp(logits, chunk_elements=chunk_elements)
    (got_grad,) = torch.autograd.grad(got, logits, upstream)
    expected = torch.logsumexp(logits, dim=-1)
    (expected_grad,) = torch.autograd.grad(expected, logits, upstream)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)


@pytest.mark.parametrize("chunk_elements", [1, 4 * 6, 1 << 24])
def test_student_normaliser_matches_autograd_of_its_parts(chunk_elements: int) -> None:
    # lse, a gather with repeated ids (the next token may also be a support) and the σ rows, one
    # row twice: every gradient reaches the one buffer and adds up as autograd's separate ops do.
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 6, (2, 5, 3))
    index[0, 0, 1] = index[0, 0, 0]
    rows = torch.tensor([0, 4, 4, 9])
    mask = torch.tensor([True, False, True, True, False, False])
    lse, gathered, space = student_normaliser(logits, index, rows, mask, chunk_elements=chunk_elements)
    up = [torch.randn_like(t) for t in (lse, gathered, space)]
    got = torch.autograd.grad([lse, gathered, space], logits, up)[0]

    flat = logits.reshape(-1, 6)
    expected_parts = (
        torch.logsumexp(logits, -1),
        logits.gather(-1, index),
        torch.logsumexp(flat[rows][:, mask], -1),
    )
    expected = torch.autograd.grad(expected_parts, logits, up)[0]
    for value, reference in zip((lse, gathered, space), expected_parts, strict=True):
        torch.testing.assert_close(value, reference)
    torch.testing.assert_close(got, expected)


def test_student_normaliser_of_bf16_logits_computes_in_fp32_and_returns_a_bf16_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7).bfloat16().requires_grad_()
    index = torch.randint(0, 7, (2, 5, 2))
    rows = torch.tensor([1, 6])
    mask = torch.tensor([True, True, False, True, False, False, True])
    lse, gathered, space = student_normaliser(logits, index, rows, mask, chunk_elements=14)
    assert (lse.dtype, gathered.dtype, space.dtype) == (torch.float32, torch.bfloat16, torch.float32)
    (lse.sum() + gathered.float().sum() + space.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16

    reference = logits.detach().float().requires_grad_()
    flat = reference.reshape(-1, 7)
    parts = (
        torch.logsumexp(reference, -1),
        reference.gather(-1, index),
        torch.logsumexp(flat[rows][:, mask], -1),
    )
    torch.testing.assert_close(lse, parts[0])
    torch.testing.assert_close(space, parts[2])
    sum(part.sum() for part in parts).backward()
    # The one bf16 buffer holds the sum of the three gradients, rounded to bf16 at each addition.
    torch.testing.assert_close(logits.grad.float(), reference.grad, atol=1e-2, rtol=1e-2)


def test_student_normaliser_without_space_rows_gives_none_of_them() -> None:
    logits = torch.randn(2, 3, 4, requires_grad=True)
    lse, gathered, space = student_normaliser(logits, torch.zeros(2, 3, 1, dtype=torch.int64))
    assert space.shape == (0,) and gathered.shape == (2, 3, 1)
    (lse.sum() + gathered.sum()).backward()
    torch.testing.assert_close(logits.grad.sum(-1), torch.full((2, 3), 2.0))


def test_logsumexp_of_bf16_is_fp32_and_grad_is_bf16() -> None:
    logits = torch.randn(2, 4, 9).bfloat16().requires_grad_()
    lse = position_logsumexp(logits)
    lse.sum().backward()
    assert lse.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lse, torch.logsumexp(logits.detach().float(), dim=-1))


def test_clm_loss_uses_row_j_to_predict_token_j_plus_one() -> None:
    # Uniform logits except a bump: row 0 favours token 2, the real next token.
    vocab = 4
    logits = torch.zeros(1, 3, vocab)
    logits[0, 0, 2] = math.log(3.0)  # softmax(row 0)[2] = 3 / (3 + 3) = 1/2
    input_ids = torch.tensor([[1, 2, 3]])
    loss_mask = torch.tensor([[True, False, False]])  # only row 0 has a counted target
    torch.testing.assert_close(clm_loss(logits, input_ids, loss_mask), torch.tensor(math.log(2.0)))
    # Row 1 predicts token 3 under uniform logits: log 4; the mean of the two rows.
    loss_mask = torch.tensor([[True, True, False]])
    expected = (math.log(2.0) + math.log(4.0)) / 2
    torch.testing.assert_close(clm_loss(logits, input_ids, loss_mask), torch.tensor(expected))


def test_clm_loss_matches_cross_entropy_and_ignores_last_column() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=gen)
    input_ids = torch.randint(0, 11, (2, 6), generator=gen)
    loss_mask = torch.rand(2, 6, generator=gen) < 0.7
    loss_mask[:, -1] = True  # no token j+1 exists there: must not count
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1][loss_mask[:, :-1]], input_ids[:, 1:][loss_mask[:, :-1]]
    )
    torch.testing.assert_close(clm_loss(logits, input_ids, loss_mask), expected)


def test_clm_loss_with_no_target_is_zero_with_grad_path() -> None:
    logits = torch.randn(1, 3, 5, requires_grad=True)
    loss = clm_loss(logits, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()


def test_feedback_loss_is_zero_for_uniform_importance() -> None:
    assert feedback_loss(torch.full((4,), 2.5)).item() == 0.0


def test_feedback_loss_by_hand() -> None:
    # I = (1, 2, 3): mean 2, unbiased variance ((1)² + 0 + (1)²) / 2 = 1 -> CV² = 1/4.
    torch.testing.assert_close(
        feedback_loss(torch.tensor([1.0, 2.0, 3.0])), torch.tensor(1.0 / (4.0 + 1e-10))
    )


def test_feedback_loss_uniform_is_the_minimum() -> None:
    uniform = feedback_loss(torch.full((3,), 1.0))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert feedback_loss(torch.rand(3, generator=gen) * 3) >= uniform


def test_feedback_loss_single_teacher_is_zero_not_nan() -> None:
    weights = torch.ones(4, 1, requires_grad=True)
    loss = feedback_loss(importance(weights))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(weights.grad).all()


def test_feedback_loss_all_zero_importance_is_zero() -> None:
    assert feedback_loss(torch.zeros(3)).item() == 0.0


def test_importance_sums_weights_over_samples() -> None:
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    torch.testing.assert_close(importance(weights), torch.tensor([0.5, 0.75, 0.75]))
