"""The pieces the loss terms share (docs/design.md §7): the log-normaliser, CLM (§7.1) and the
feedback loss (§7.3, CV² of the gate importance).

Index convention (shared with fusion.py and the loader): row j of the student logits predicts
the token at j+1. `loss_mask[b, j]` is true iff `input_ids[b, j+1]` is a real token, i.e. row j
has a real next-token target; teacher rows `[b, k, j]` are indexed the same way (distribution of
the token at j+1), so logits, teacher rows and `loss_mask` line up with no further shift.

The terms these functions compute are weighted and summed in loss_terms.py (one function and
one weight per term); gradient routing: L_clm reaches the student only, L_feed the gate only, and
a distillation term both unless the caller detaches the sample weights w it reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGSUMEXP_CHUNK_ELEMENTS = 1 << 24
"""Upper bound on elements upcast at once (64 MiB in fp32): bounds the fp32 working set of
the log-normaliser instead of materialising a second [B, T, V] fp32 copy of the logits."""

FEEDBACK_EPS = 1e-10
"""The 1e-10 of docs/design.md §7.3 in CV² = Var(I) / (Mean(I)² + 1e-10)."""


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype loss maths runs in: at least fp32 (bf16/fp16 logits are upcast, fp64 kept)."""
    return torch.promote_types(dtype, torch.float32)


class _StudentNormaliser(torch.autograd.Function):
    """Everything the loss terms read of the `[B, T, V]` logits, with one gradient buffer.

    Forward: the logsumexp over V per position in fp32, a chunk of rows at a time; the logits at
    `index` (the next tokens and the teachers' supports); and, for the chunk loss's σ correction,
    the logsumexp over the ids of `space_mask` at the flat rows `space_rows`. Backward writes
    softmax·grad chunk by chunk into one buffer and adds the gather's and the σ rows' gradients to
    it in place. Taken one at a time, autograd would instead keep an fp32 [B, T, V] copy alive
    until backward (bf16 students), zero a dense [B, T, V] buffer for the gather and another for
    the σ rows, and add the three: the chunk loss's backward then cost 0.7–1.0 s a step more than
    the bare loop's, and now costs 0.2 s (bench/results/train_speed.md against
    bench/results/xeon_amx/zero0_distill_terms/).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: torch.Tensor,
        index: torch.Tensor,
        space_rows: torch.Tensor,
        space_mask: torch.Tensor,
        chunk_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = logits.reshape(-1, logits.shape[-1])
        lse = torch.empty(flat.shape[0], dtype=loss_dtype(logits.dtype), device=logits.device)
        for start in range(0, flat.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            lse[rows] = torch.logsumexp(flat[rows].to(lse.dtype), dim=-1)
        space = torch.logsumexp(_space_logits(flat, space_rows, space_mask, lse.dtype), dim=-1)
        ctx.save_for_backward(logits, lse, index, space_rows, space_mask, space)
        ctx.chunk_rows = chunk_rows
        return lse.view(logits.shape[:-1]), logits.gather(-1, index), space

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_lse: torch.Tensor, grad_gathered: torch.Tensor, grad_space: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        logits, lse, index, space_rows, space_mask, space = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        grad_flat = grad_lse.reshape(-1, 1).to(lse.dtype)
        lse = lse.unsqueeze(-1)
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # One chunk-size temporary, updated in place: d lse / d z = softmax(z).
            softmax = flat[rows].to(lse.dtype) - lse[rows]
            grad[rows] = softmax.exp_().mul_(grad_flat[rows])
        grad.view_as(logits).scatter_add_(-1, index, grad_gathered.to(grad.dtype))
        if space_rows.numel():
            # d space / d z = the softmax restricted to the space ids (0 elsewhere: exp(−inf)).
            masked = _space_logits(flat, space_rows, space_mask, lse.dtype).sub_(space.unsqueeze(-1))
            grad.index_add_(0, space_rows, masked.exp_().mul_(grad_space.unsqueeze(-1)).to(grad.dtype))
        return grad.view_as(logits), None, None, None, None


def _space_logits(
    flat: torch.Tensor, rows: torch.Tensor, space_mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """`[N, V]` the logits of `rows` in `dtype`, −inf outside `space_mask`."""
    return flat.index_select(0, rows).to(dtype).masked_fill_(~space_mask, float("-inf"))


def student_normaliser(
    logits: torch.Tensor,
    index: torch.Tensor,
    space_rows: torch.Tensor | None = None,
    space_mask: torch.Tensor | None = None,
    chunk_elements: int = LOGSUMEXP_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log-normaliser, the logits at `index` and the σ rows' log-sum-exp, differentiable, with
    a single `[B, T, V]` gradient buffer among them (`_StudentNormaliser`).

    Args:
        logits: `[B, T, V]` student logits, any float dtype.
        index: `[B, T, M]` int64 vocabulary ids to gather at every position.
        space_rows: `[N]` int64 rows of `logits.reshape(-1, V)` to take the σ log-sum-exp at;
            None: none.
        space_mask: `[V]` bool, the ids σ sums over (needed with `space_rows`).
        chunk_elements: at most this many logits are upcast at once (a memory knob only).

    Returns:
        `[B, T]` log Σ_v exp(z_v) in at least fp32; `[B, T, M]` the logits at `index` in their
        own dtype; `[N]` log Σ_{v in space_mask} exp(z_v) at `space_rows` in the lse dtype.
    """
    if space_rows is None:
        space_rows = index.new_zeros(0)
        space_mask = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    assert space_mask is not None, "space rows need the space mask"
    chunk_rows = max(1, chunk_elements // logits.shape[-1])
    return _StudentNormaliser.apply(logits, index, space_rows, space_mask.to(logits.device), chunk_rows)


def position_logsumexp(logits: torch.Tensor, chunk_elements: int = LOGSUMEXP_CHUNK_ELEMENTS) -> torch.Tensor:
    """log Σ_v exp(z_v) per position, in at least fp32, differentiable.

    Args:
        logits: `[B, T, V]` student logits, any float dtype.
        chunk_elements: at most this many logits are upcast at once (a memory knob only).

    Returns:
        `[B, T]` log-normaliser. A training step takes it from `student_normaliser` together with
        the logits every term gathers (one logsumexp and one gradient buffer per micro-batch).
    """
    index = torch.zeros(*logits.shape[:-1], 0, dtype=torch.int64, device=logits.device)
    return student_normaliser(logits, index, chunk_elements=chunk_elements)[0]


def next_token_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """`[B, T]` id of the token row j predicts, `input_ids[:, j+1]` (0 in the last column)."""
    return F.pad(input_ids[:, 1:], (0, 1))


def clm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    lse: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy, mean over positions with a real target.

    Args:
        logits: `[B, T, V]`; row j predicts `input_ids[:, j+1]`.
        input_ids: `[B, T]` int64, padded.
        loss_mask: `[B, T]` bool, true where row j has a real next token. The last column is
            ignored: `input_ids` holds no token j+1 there.
        lse: `[B, T]` from `position_logsumexp(logits)`, computed here when None.
        target_logits: `[B, T]` logits at `next_token_ids(input_ids)`, when the caller gathered
            them together with the fusion supports (one gather: one sparse [B, T, V] gradient
            buffer for both losses instead of one each); gathered here when None.

    Returns:
        Scalar fp32 (or fp64 for fp64 logits) loss; 0 with a grad path when no position counts.
    """
    if lse is None:
        lse = position_logsumexp(logits)
    # Shift the targets, not the logits: gathering from a [:, :-1] slice would make autograd
    # allocate two [B, T, V] gradient buffers (gather's, then the slice's) instead of one.
    mask = F.pad(loss_mask[:, :-1], (0, 1))
    if target_logits is None:
        target_logits = logits.gather(-1, next_token_ids(input_ids).unsqueeze(-1)).squeeze(-1)
    target_logits = target_logits.to(lse.dtype)
    per_position = (lse - target_logits) * mask
    return per_position.sum() / mask.sum().clamp_min(1)


def importance(weights: torch.Tensor) -> torch.Tensor:
    """Gate importance I_k = Σ_b w_bk over the micro-batch.

    Args:
        weights: `[B, K]` sample weights (with their grad path to the gate).

    Returns:
        `[K]`. The optimizer-step / all-ranks option of docs/design.md §7.3 adds the other
        micro-batches' and ranks' importance to it: `model.FusionModule.feedback_importance`.
    """
    return weights.sum(dim=0)


def feedback_loss(importance: torch.Tensor) -> torch.Tensor:
    """CV² load-balancing loss Var_unbiased(I) / (Mean(I)² + 1e-10) (Shazeer et al. 2017).

    Args:
        importance: `[K]` teacher importance.

    Returns:
        Scalar, 0 for uniform importance (its minimum) and for K = 1, where the unbiased
        variance is undefined (0/0); the K = 1 zero keeps a grad path.
    """
    if importance.numel() < 2:
        return importance.sum() * 0.0
    return importance.var(unbiased=True) / (importance.mean() ** 2 + FEEDBACK_EPS)
