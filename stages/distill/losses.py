"""Student-side losses of DESIGN.md §6: the log-normaliser, CLM, feedback (CV²) and the total.

Index convention (shared with fusion.py and the loader): row j of the student logits predicts
the token at j+1. `loss_mask[b, j]` is true iff `input_ids[b, j+1]` is a real token, i.e. row j
has a real next-token target; teacher rows `[b, k, j]` are indexed the same way (distribution of
the token at j+1), so logits, teacher rows and `loss_mask` line up with no further shift.

Gradient routing: L = λ·L_CLM + (1−λ)·L_fuse + β·L_feed. L_feed depends only on the gate
weights, L_CLM only on the student, and L_fuse on both, so one backward of the total sends
λ·CLM + (1−λ)·fusion to the student and β·feedback (+ (1−λ)·fusion through w, unless the caller
detaches w, see `fuse_position_weights`) to the gate. Under `gate_objective: likelihood` the
caller detaches w in the fusion loss and adds L_gate (gate_objective.py), which depends on the
gate alone. A micro-batch reads, top to bottom:

    lse = position_logsumexp(logits)                      # one logsumexp over V, shared
    clm = clm_loss(logits, input_ids, loss_mask, lse=lse)
    w = sample_weights(strategy, scores, present, gate=gate, tau=tau)
    fused = fusion_cross_entropy(logits, support_ids, support_probs,
                                 fuse_position_weights(w if fusion_trains_gate else w.detach(),
                                                       available), loss_mask, lse=lse)
    terms = combine_losses(clm, fused.loss, feedback_loss(importance(w)),
                           lam=lam, beta=beta)      # `none`: CLM alone, λ = 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOGSUMEXP_CHUNK_ELEMENTS = 1 << 24
"""Upper bound on elements upcast at once (64 MiB in fp32): bounds the fp32 working set of
the log-normaliser instead of materialising a second [B, T, V] fp32 copy of the logits."""

FEEDBACK_EPS = 1e-10
"""The 1e-10 of DESIGN.md §6 in CV² = Var(I) / (Mean(I)² + 1e-10)."""


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
        `[K]`. The optimizer-step / all-ranks option of DESIGN.md §6 adds the other
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


@dataclass(frozen=True)
class LossTerms:
    """The loss terms of a micro-batch and their weighted total (all scalar tensors)."""

    clm: torch.Tensor
    fusion: torch.Tensor
    feedback: torch.Tensor
    total: torch.Tensor
    gate_nll: torch.Tensor | None = None
    """L_gate of `gate_objective: likelihood` (in the total with weight 1), else None."""

    def detached(self) -> dict[str, float]:
        """Python floats for logging (one host sync for all terms); `gate_nll` only when there is one."""
        names = ["clm", "fusion", "feedback", "total"]
        terms = [self.clm, self.fusion, self.feedback, self.total]
        if self.gate_nll is not None:
            names.append("gate_nll")
            terms.append(self.gate_nll)
        values = torch.stack([t.detach().float() for t in terms])
        return dict(zip(names, values.tolist(), strict=True))


def combine_losses(
    clm: torch.Tensor,
    fusion: torch.Tensor,
    feedback: torch.Tensor,
    *,
    lam: float,
    beta: float,
    gate_nll: torch.Tensor | None = None,
) -> LossTerms:
    """L = λ·L_CLM + (1−λ)·L_fuse + β·L_feed (+ L_gate) (DESIGN.md: λ = 0.9, β = 0.5; λ = 1 for `none`).

    `gate_nll` (the `likelihood` gate objective) depends on the gate only, so adding it with weight
    1 changes no student gradient; pass it only where it trains a gate.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (the CLM weight) must be in [0, 1], got {lam}")
    if beta < 0.0:
        raise ValueError(f"beta (the feedback-loss weight) must be >= 0, got {beta}")
    total = lam * clm + (1.0 - lam) * fusion + beta * feedback
    if gate_nll is not None:
        total = total + gate_nll
    return LossTerms(clm=clm, fusion=fusion, feedback=feedback, total=total, gate_nll=gate_nll)
