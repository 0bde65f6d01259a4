"""What trains the selection gate (`distill.gate_objective`, docs/design.md §7.6).

`fusion` (the paper's): the gate gets L_fuse through the weights w. ∂L_fuse/∂w_bk is, up to a
term shared by all teachers, the student's cross-entropy against teacher k, so descent moves
weight toward the teacher the student already imitates, not toward the one that knows the text.

`likelihood`: the gate maximises the likelihood of the training text under the w-mixture of the
teachers, span by span (stages/align/spans.py: spans between offsets where every present teacher
has a token boundary, ll_bks = log p_k(text of span s | text before s)):

    L_gate = −mean_b (1 / bytes_b) Σ_s log Σ_k w_bk exp(ll_bks)   (present teachers only)

in nats per byte of the spans (bytes_b: the UTF-8 bytes sample b's spans cover).
Tokenizer-neutral and read from the cache alone: no student in it. The fusion loss then reaches
the student only (w is detached there) and the gate gets L_gate + β·L_feed.
"""

from __future__ import annotations

import torch


def mixture_span_nll(
    weights: torch.Tensor,
    span_loglik: torch.Tensor,
    span_mask: torch.Tensor,
    present: torch.Tensor,
    span_bytes: torch.Tensor | None = None,
) -> torch.Tensor:
    """−mean_b Σ_s log Σ_k w_bk exp(ll_bks): the text's NLL under the teachers' w-mixture.

    Args:
        weights: `[B, K]` sample weights w (rows sum to 1 over present teachers), with their grad
            path to the gate.
        span_loglik: `[B, K, S]` ll_bks, teacher k's log-likelihood of span s of sample b; any
            finite value where the span is padding or the teacher absent.
        span_mask: `[B, S]` bool, true on the real spans of sample b.
        present: `[B, K]` bool, teacher k has data for sample b.
        span_bytes: `[B]` bytes the spans of each sample cover: each sample's NLL is divided by
            them (nats per byte, what training uses). None: nats per sample.

    Returns:
        Scalar fp32. A sample with one present teacher adds a constant (its w is 1); one with no
        teacher, no spans, no bytes or all-zero weights adds 0. Teachers with w = 0 (not
        selected) drop out of the mixture and get a zero gradient, never NaN.

    Per byte, L_gate is of the order of the other loss terms (≈ 0.7 nat per byte). Per sample it
    is hundreds of nats, and its gradient then dominates DeepSpeed's global gradient-norm clipping
    and shrinks the student's steps (measured in `make experiment`: with per-sample L_gate the
    student ended +0.0028 ± 0.0004 bits per byte worse than `none`, against −0.0008 ± 0.0001 for
    every other fused method; per byte it matches them).
    """
    per_sample = mixture_span_nll_per_sample(weights.float(), span_loglik.float(), span_mask, present)
    if span_bytes is not None:
        size = span_bytes.to(per_sample.dtype)
        per_sample = torch.where(size > 0, per_sample / size.clamp_min(1), 0.0)
    return per_sample.sum() / max(weights.shape[0], 1)


def mixture_span_nll_per_sample(
    weights: torch.Tensor, span_loglik: torch.Tensor, span_mask: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """`[B]` −Σ_s log Σ_k w_bk exp(ll_bks) per sample, in the dtype of `weights` (arguments and
    the zero cases as in `mixture_span_nll`)."""
    w, ll = weights, span_loglik.to(weights.dtype)
    used = present.bool() & (w > 0)  # [B, K]
    active = used.any(dim=-1)  # [B]
    # log w where used, −inf elsewhere; the clamp keeps log(0)'s infinite slope out of backward.
    log_w = torch.where(used, w.clamp_min(torch.finfo(w.dtype).tiny).log(), float("-inf"))
    terms = log_w.unsqueeze(-1) + torch.where(used.unsqueeze(-1), ll, 0.0)  # [B, K, S]
    # Rows with no used teacher would be all −inf (NaN gradient through logsumexp): make them finite
    # and drop them below.
    terms = torch.where(active[:, None, None], terms, 0.0)
    span_ll = torch.logsumexp(terms, dim=1)  # [B, S]
    keep = span_mask.bool() & active.unsqueeze(-1)
    return -torch.where(keep, span_ll, 0.0).sum(dim=-1)
