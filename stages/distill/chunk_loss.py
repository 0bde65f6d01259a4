"""Chunk-level likelihood matching (ALM, Minixhofer, Vulić & Ponti 2025): the student's
log-likelihood of each chunk against the teachers' (stages/align/chunks.py for the chunks).

Per sample b and chunk c (S chunks, K teachers, w_bk the sample weights of the strategy):

    ℓ_S(b, c) = Σ_{rows j in c} log q(x_{j+1} | x_≤j)            [+ log σ_S at c's end]
    ℓ_T(b, c) = log Σ_k w_bk exp(ℓ_k(b, c) [+ log σ_k at c's end])  (present teachers with w > 0)
    y = exp(ℓ_T / τ_c),  x = exp(ℓ_S / τ_c)                            (τ_c: `chunk_temperature`)
    BCE(b, c) = −[ y log x + (1 − y) log(1 − x) ]
    L_chunk   = τ_c · Σ_{b,c} BCE(b, c) / (student rows inside chunks)

log(1 − x) is log1mexp(ℓ_S/τ_c), computed stably; both ℓ are clipped at 0 and shifted by ε = 1e-6
before the division so that neither log(1 − x) nor log(1 − y) meets log 0 (tokenkit's
`binary_ce`). BCE is ALM's loss; the factor τ_c and the per-row normalisation are ours: for large
τ_c, d(τ_c·BCE)/dℓ_S → −(1 − u/v) with u = −ℓ_T, v = −ℓ_S, so the chunk's gradient is
(1 − u/v)·∇CE_c — the student's own cross-entropy on the chunk's tokens, reweighted by how far
it is from the teacher (negative where the student is already better). Divided by the rows the
chunks cover, L_chunk is then on the per-token scale of the CLM loss and λ balances the two.

Samples without a chunk (no common boundary) add nothing; an all-empty batch gives 0 with a grad
path, never NaN.
"""

from __future__ import annotations

import math

import torch

EPSILON = 1e-6
"""tokenkit's ε: the log-likelihoods over τ_c are shifted below 0 by this much."""


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate on both sides of log ½ (Mächler 2012)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def binary_chunk_ce(
    teacher_loglik: torch.Tensor, student_loglik: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Elementwise −[y log x + (1 − y) log(1 − x)], y = exp(ℓ_T/τ), x = exp(ℓ_S/τ) (see module)."""
    log_y = teacher_loglik.clamp(max=0.0) / temperature - EPSILON
    log_x = student_loglik.clamp(max=0.0) / temperature - EPSILON
    return -(torch.exp(log_y) * log_x + (-torch.expm1(log_y)) * log1mexp(log_x))


def student_chunk_loglik(
    next_logprobs: torch.Tensor, row_chunk: torch.Tensor, num_chunks: int
) -> torch.Tensor:
    """`[B, S]` ℓ_S without the σ term: the student's next-token log-probabilities summed per chunk.

    Args:
        next_logprobs: `[B, T]` log q(x_{j+1} | x_≤j) of row j (differentiable).
        row_chunk: `[B, T]` int64 chunk of row j, −1 outside every chunk (and on padding).
        num_chunks: S.
    """
    inside = row_chunk >= 0
    values = torch.where(inside, next_logprobs, 0.0)
    out = next_logprobs.new_zeros(next_logprobs.shape[0], num_chunks + 1)
    # Rows outside every chunk land in the extra column S, dropped below.
    return out.scatter_add(1, torch.where(inside, row_chunk, num_chunks), values)[:, :num_chunks]


def space_rows(end_row: torch.Tensor, length: int) -> torch.Tensor:
    """`[N]` int64 the flat rows (`b·T + row`) of every chunk end with a σ correction, in `end_row`'s
    row-major order; `end_row`: `[B, S]` the student row after each chunk, −1: no correction."""
    batch = torch.arange(end_row.shape[0], device=end_row.device).unsqueeze(1)
    return (batch * length + end_row.clamp_min(0))[end_row >= 0]


def student_space_logprob(space_lse: torch.Tensor, lse: torch.Tensor, end_row: torch.Tensor) -> torch.Tensor:
    """`[B, S]` log σ_S at each chunk's end row: log Σ_{v in the space mask} q(v) (differentiable);
    0 where `end_row` is −1.

    Args:
        space_lse: `[N]` log Σ_{v in the space mask} exp(z_v) at `space_rows(end_row, T)`
            (`losses.student_normaliser`).
        lse: `[B, T]` the log-normaliser.
        end_row: `[B, S]` int64 the student row after each chunk, −1: no correction.
    """
    values = space_lse - lse.reshape(-1).index_select(0, space_rows(end_row, lse.shape[1]))
    return lse.new_zeros(end_row.shape).masked_scatter(end_row >= 0, values.to(lse.dtype))


def mixture_chunk_loglik(
    teacher_loglik: torch.Tensor, weights: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """`[B, S]` ℓ_T = log Σ_k w_bk exp(ℓ_k) over present teachers with w > 0 (0 where none).

    Args:
        teacher_loglik: `[B, K, S]` ℓ_k, σ term included when corrected.
        weights: `[B, K]` sample weights (rows sum to 1 over present teachers).
        present: `[B, K]` bool.
    """
    used = present.bool() & (weights > 0)
    dtype = teacher_loglik.dtype
    w = weights.to(dtype)
    log_w = torch.where(used, w.clamp_min(torch.finfo(dtype).tiny).log(), float("-inf"))
    terms = log_w.unsqueeze(-1) + torch.where(used.unsqueeze(-1), teacher_loglik, 0.0)
    active = used.any(dim=-1)
    terms = torch.where(active[:, None, None], terms, 0.0)  # keep logsumexp finite; dropped by the caller
    return torch.logsumexp(terms, dim=1)


def chunk_distillation_loss(
    next_logprobs: torch.Tensor,
    row_chunk: torch.Tensor,
    chunk_mask: torch.Tensor,
    teacher_loglik: torch.Tensor,
    weights: torch.Tensor,
    present: torch.Tensor,
    temperature: float,
    student_space: torch.Tensor | None = None,
    teacher_space: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_chunk of a micro-batch (module docstring).

    Args:
        next_logprobs: `[B, T]` the student's log-probability of each next token (differentiable).
        row_chunk: `[B, T]` int64 chunk of each row, −1 outside.
        chunk_mask: `[B, S]` bool, real chunks.
        teacher_loglik: `[B, K, S]` ℓ_k of each chunk (0 on padding and absent teachers).
        weights: `[B, K]` sample weights w (detach them to keep the loss from training the gate).
        present: `[B, K]` bool.
        temperature: τ_c.
        student_space, teacher_space: `[B, S]` and `[B, K, S]` log σ at the chunk ends (0 where no
            correction applies); None: no bias correction.

    Returns:
        (scalar loss, number of chunks that count, student rows they cover).
    """
    chunks = chunk_mask.shape[1]
    dtype = next_logprobs.dtype
    student = student_chunk_loglik(next_logprobs, row_chunk, chunks)
    teacher = teacher_loglik.to(dtype)
    if student_space is not None:
        assert teacher_space is not None, "the σ correction needs both sides"
        student = student + student_space.to(dtype)
        teacher = teacher + teacher_space.to(dtype)
    mixture = mixture_chunk_loglik(teacher, weights, present)
    counts = chunk_mask & (present.bool() & (weights > 0)).any(dim=-1, keepdim=True)
    per_chunk = binary_chunk_ce(mixture, student, temperature)
    rows = ((row_chunk >= 0) & counts.any(dim=-1, keepdim=True)).sum()
    loss = temperature * torch.where(counts, per_chunk, 0.0).sum() / rows.clamp_min(1)
    return loss, counts.sum(), rows
