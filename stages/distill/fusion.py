"""Sparse dynamic fusion of the teachers' top-k targets (docs/design.md §7.2).

    w'_bjk  = w_bk a_bjk / Σ_k w_bk a_bjk                      (0 where the sum is 0)
    L_fuse  = mean over fused (b, j) of Σ_k w'_bjk CE_bjk
    CE_bjk  = Σ_{v∈S_bjk} p_bjk(v) (lse(z_bj) − z_bj(v))  −  r_bjk log(1 − Σ_{v∈S_bjk} q_bj(v))

with q = softmax(z) the student's distribution. Teacher k's target at (b, j) is a distribution
over its support S_bjk and one "rest" bucket of mass r_bjk = 1 − Σ_S p (stages/align/sample.py:
r = 0 for the renormalised top-k; the residual top-k and the sampled target keep r > 0), and
CE_bjk is the student's cross-entropy against it with the student's mass on the bucket being
1 − Σ_S q — the coarsening of the full-vocabulary cross-entropy to the partition S ∪ {rest}.
Its gradient on a support logit is q(v) − p(v), exactly the full-distribution KD gradient there;
off the support it moves the student's remaining mass toward r as a whole, with the shape of
that mass left to the student. Each teacher's rest bucket is its own (the supports differ), so
the fused loss is the w'-mixture of the per-teacher cross-entropies, linear in the targets: a
one-hot w fuses to that teacher exactly and identical teachers fuse to themselves.

Only the K·k support logits are gathered and one logsumexp over V is taken per position: no
[B, T, V] teacher tensor, no union-of-supports tensor, no second full log-softmax. Indices
follow losses.py: teacher row `[b, k, j]` is the distribution of the token at j+1, like
student logits row j, and `loss_mask[b, j]` says that token is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.distill.losses import loss_dtype, position_logsumexp

REST_FLOOR = 1e-6
"""1 − Σ_S q is floored here before its log: a finite loss and gradient when the student has put
(nearly) all its mass on a support the teacher says is not all."""


@dataclass(frozen=True)
class FusionResult:
    """Fusion loss of a micro-batch and two cheap statistics for the training log."""

    loss: torch.Tensor
    """Scalar; 0 (still differentiable) when no position has a fused target."""
    fused_positions: torch.Tensor
    """int64 scalar: positions with loss_mask and at least one teacher of non-zero weight."""
    target_entropy: torch.Tensor
    """Scalar, detached: mean entropy (nats) of the fused target Σ_k w' p_k over fused positions,
    duplicates across teachers merged."""


def fuse_position_weights(sample_weights: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Renormalise the per-sample weights over the teachers available at each position.

    Args:
        sample_weights: `[B, K]` w from the strategy. Detach it first to keep the fusion loss
            from training the gate (`fusion_trains_gate=False`).
        available: `[B, K, T]` bool, true where teacher k has an aligned row at position j.

    Returns:
        `[B, K, T]` w' in the dtype of the weights: sums to 1 over k where some available
        teacher has non-zero weight, all zero elsewhere (such positions leave the fusion loss,
        never a made-up target).
    """
    weighted = sample_weights.unsqueeze(-1) * available
    mass = weighted.sum(dim=1, keepdim=True)
    # Divide by 1 where mass is 0 (then weighted is 0 too): no 0/0, and a finite gradient.
    return weighted / torch.where(mass > 0, mass, torch.ones_like(mass))


def flat_support_ids(support_ids: torch.Tensor) -> torch.Tensor:
    """`[B, K, T, k]` -> `[B, T, K·k]`: every teacher's support of a position side by side, the
    layout of one gather along the vocabulary for all teachers at once."""
    batch, num_teachers, length, top_k = support_ids.shape
    return support_ids.permute(0, 2, 1, 3).reshape(batch, length, num_teachers * top_k)


def fusion_cross_entropy(
    logits: torch.Tensor,
    support_ids: torch.Tensor,
    support_probs: torch.Tensor,
    position_weights: torch.Tensor,
    loss_mask: torch.Tensor,
    lse: torch.Tensor | None = None,
    support_logits: torch.Tensor | None = None,
    rest_mass: torch.Tensor | None = None,
) -> FusionResult:
    """Cross-entropy of the student against the w'-mixture of the teachers' sparse targets.

    Args:
        logits: `[B, T, V]` student logits, any float dtype (maths in at least fp32).
        support_ids: `[B, K, T, k]` int64 student-vocab ids of each teacher's top-k (padding
            entries: any valid id with probability 0).
        support_probs: `[B, K, T, k]` target probabilities p on the support (0 on padding, so a
            support entry is one with p > 0).
        position_weights: `[B, K, T]` w' from `fuse_position_weights`.
        loss_mask: `[B, T]` bool, true where row j has a real next token.
        lse: `[B, T]` from `position_logsumexp(logits)`, shared with the CLM loss; computed
            here when None.
        support_logits: `[B, T, K·k]` logits at `flat_support_ids(support_ids)`, when the caller
            gathered them together with the CLM targets (see `clm_loss`); gathered here when None.
        rest_mass: `[B, K, T]` r, the target mass outside each support; None: 0 everywhere (the
            renormalised top-k), which skips the rest term.

    Returns:
        `FusionResult` with the mean over fused positions.
    """
    batch, num_teachers, length, top_k = support_ids.shape
    if (batch, length) != tuple(logits.shape[:2]) or support_probs.shape != support_ids.shape:
        raise ValueError(
            f"teacher rows must be [B, K, T, k] with the logits' B and T: logits "
            f"{tuple(logits.shape)}, support_ids {tuple(support_ids.shape)}, support_probs "
            f"{tuple(support_probs.shape)}; the loader must pad teachers to the student's length"
        )
    if lse is None:
        lse = position_logsumexp(logits)
    dtype = loss_dtype(logits.dtype)

    ids = flat_support_ids(support_ids)
    if support_logits is None:
        support_logits = logits.gather(-1, ids)
    support_logits = support_logits.to(dtype).view(batch, length, num_teachers, top_k)

    # q = w'·p is the fused target's mass on each support entry, [B, T, K, k].
    target = position_weights.to(dtype).unsqueeze(-1) * support_probs.to(dtype)
    target = target.permute(0, 2, 1, 3)
    # Σ q (lse − z) rather than lse − Σ q z: exact even if rounding leaves Σ p slightly off 1.
    nll = lse.to(dtype)[:, :, None, None] - support_logits  # −log q(v), [B, T, K, k]
    per_position = (target * nll).sum(dim=(2, 3))
    rest = None
    if rest_mass is not None:
        # −r log(1 − Σ_S q): the student's mass off teacher k's support, [B, T, K].
        in_support = (support_probs > 0).permute(0, 2, 1, 3)
        support_mass = (torch.exp(-nll) * in_support).sum(dim=-1)
        log_off_support = torch.log1p(-support_mass.clamp(max=1.0 - REST_FLOOR))
        rest = position_weights.to(dtype).permute(0, 2, 1) * rest_mass.to(dtype).permute(0, 2, 1)
        per_position = per_position - (rest * log_off_support).sum(dim=-1)

    fused = loss_mask & (position_weights.sum(dim=1) > 0)
    count = fused.sum()
    # per_position is already 0 where w' is 0; the mask removes rows without a real target.
    loss = (per_position * fused).sum() / count.clamp_min(1)
    return FusionResult(
        loss=loss,
        fused_positions=count,
        target_entropy=fused_target_entropy(ids, target.reshape(ids.shape), fused, rest),
    )


@torch.no_grad()
def fused_target_entropy(
    ids: torch.Tensor, target: torch.Tensor, fused: torch.Tensor, rest: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean entropy of the fused target over fused positions, a logging statistic.

    Args:
        ids: `[B, T, S]` support ids, S = K·k, possibly repeated across teachers.
        target: `[B, T, S]` mass of the fused target on each entry (with `rest`, sums to 1 per position).
        fused: `[B, T]` bool, positions to average over.
        rest: `[B, T, K]` w'·r, each teacher's rest bucket counted as one outcome of its own
            (a lower bound of the entropy the bucket's tokens would have).

    Returns:
        Scalar (nats); 0 when no position is fused.
    """
    if rest is not None:
        bucket_ids = -1 - torch.arange(rest.shape[-1], device=ids.device).expand_as(rest)
        ids, target = torch.cat([ids, bucket_ids], dim=-1), torch.cat([target, rest], dim=-1)
    # Merge repeated ids (teachers agreeing on a token) before -Σ q log q: sort the ids, number
    # the runs of equal ids, and scatter-add each entry's mass into its run.
    sorted_ids, order = ids.sort(dim=-1)
    run_starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    run_starts[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    run_index = run_starts.cumsum(dim=-1) - 1
    merged = torch.zeros_like(target).scatter_add_(-1, run_index, target.gather(-1, order))
    entropy = -torch.xlogy(merged, merged).sum(dim=-1)
    return (entropy * fused).sum() / fused.sum().clamp_min(1)
