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


class _ChunkedLogSumExp(torch.autograd.Function):
    """logsumexp over the last dim in fp32, a chunk of rows at a time, in both passes.

    Saves the logits in their own dtype and the [N] result; backward rebuilds softmax·grad chunk
    by chunk into the gradient buffer. `torch.logsumexp(logits.float())` would instead keep an
    fp32 [B, T, V] copy alive until backward (bf16 students) and allocate a full-size temporary.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, chunk_rows: int) -> torch.Tensor:  # type: ignore[override]
        flat = logits.reshape(-1, logits.shape[-1])
        out = torch.empty(flat.shape[0], dtype=loss_dtype(logits.dtype), device=logits.device)
        for start in range(0, flat.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            out[rows] = torch.logsumexp(flat[rows].to(out.dtype), dim=-1)
        ctx.save_for_backward(logits, out)
        ctx.chunk_rows = chunk_rows
        return out.view(logits.shape[:-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        logits, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        grad_flat = grad_out.reshape(-1, 1).to(lse.dtype)
        lse = lse.unsqueeze(-1)
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # One chunk-size temporary, updated in place: d lse / d z = softmax(z).
            softmax = flat[rows].to(lse.dtype) - lse[rows]
            grad[rows] = softmax.exp_().mul_(grad_flat[rows])
        return grad.view_as(logits), None


def position_logsumexp(logits: torch.Tensor, chunk_elements: int = LOGSUMEXP_CHUNK_ELEMENTS) -> torch.Tensor:
    """log Σ_v exp(z_v) per position, in at least fp32, differentiable.

    Args:
        logits: `[B, T, V]` student logits, any float dtype.
        chunk_elements: at most this many logits are upcast at once (a memory knob only).

    Returns:
        `[B, T]` log-normaliser; compute it once per micro-batch and pass it to `clm_loss` and
        `fusion_cross_entropy` so the step has a single logsumexp over the vocabulary.
    """
    chunk_rows = max(1, chunk_elements // logits.shape[-1])
    return _ChunkedLogSumExp.apply(logits, chunk_rows)


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
