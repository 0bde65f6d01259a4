"""Does the gate select by evidence? Its weights against two oracles, on the teachers' spans.

Everything here reads the span log-likelihoods of gate_objective.py (ll_bks = log p_k(span s of
sample b | text before s), tokenizer-neutral) and each teacher's stored bits per byte; no student.

- **oracle teacher** of sample b: the present teacher with the lowest bits per byte on it, the
  teacher `min_bpb` picks. The gate **agrees** on b when its largest weight is that teacher's.
- **oracle mixture** of sample b: the weights v_b maximising Σ_s log Σ_k v_bk exp(ll_bks), found by
  EM (`em_mixture_weights`): the best any per-sample weighting of these teachers can do on b.
- **mixture bits per byte** of weights w over samples B: Σ_b NLL_b(w) / (ln 2 · Σ_b bytes_b), with
  NLL_b(w) = −Σ_s log Σ_k w_bk exp(ll_bks) and bytes_b the UTF-8 bytes the spans of b cover.
  One-hot weights on the oracle teacher give the per-sample best single teacher, one-hot weights
  on one fixed teacher that teacher's own bits per byte on the spans.

Samples with fewer than two present teachers have nothing to select and are left out of every
figure here (`contested`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from stages.distill.gate_objective import mixture_span_nll_per_sample


def contested(present: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """`[B]` bool: samples with ≥ 2 present teachers and at least one span."""
    return (present.bool().sum(dim=-1) >= 2) & span_mask.bool().any(dim=-1)


def oracle_teacher(bits_per_byte: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """`[B]` int64: per sample, the present teacher with the lowest bits per byte (`[B, K]`)."""
    return torch.where(present.bool(), bits_per_byte.float(), float("inf")).argmin(dim=-1)


def em_mixture_weights(
    span_loglik: torch.Tensor, span_mask: torch.Tensor, present: torch.Tensor, iterations: int = 100
) -> torch.Tensor:
    """Per sample, the mixture weights of maximal span likelihood, by EM (monotone in the likelihood).

    Args:
        span_loglik: `[B, K, S]` ll_bks (any finite value on padding and absent teachers).
        span_mask: `[B, S]` bool, the real spans.
        present: `[B, K]` bool.
        iterations: EM steps; each is exact (responsibilities, then their mean over the spans).

    Returns:
        `[B, K]` float64 weights, rows summing to 1 over present teachers (uniform where a sample
        has no span), 0 for absent teachers and for samples with no teacher.
    """
    ll = span_loglik.double()
    mask = span_mask.bool()
    used = present.bool()
    count = used.sum(dim=-1, keepdim=True).clamp_min(1)
    weights = used.double() / count
    spans = mask.sum(dim=-1, keepdim=True).double()
    for _ in range(iterations):
        log_w = torch.where(used, weights.clamp_min(1e-300).log(), float("-inf"))
        joint = torch.where(used.unsqueeze(-1), log_w.unsqueeze(-1) + ll, float("-inf"))  # [B, K, S]
        # Samples with no present teacher: keep the softmax finite; their rows stay 0 below.
        joint = torch.where(used.any(dim=-1)[:, None, None], joint, 0.0)
        responsibility = torch.softmax(joint, dim=1) * mask.unsqueeze(1)
        updated = responsibility.sum(dim=-1) / spans.clamp_min(1)
        weights = torch.where(spans > 0, updated, weights) * used
    return weights


def mixture_bits(weights: torch.Tensor, span_loglik: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """`[B]` float64 bits of each sample's spans under its w-mixture (`[B, K]`, 0 = not in it)."""
    used = weights > 0
    nats = mixture_span_nll_per_sample(weights.double(), span_loglik.double(), span_mask, used)
    return nats / math.log(2)


def gate_diagnostics(
    weights: torch.Tensor,
    span_loglik: torch.Tensor,
    span_mask: torch.Tensor,
    span_bytes: torch.Tensor,
    bits_per_byte: torch.Tensor,
    present: torch.Tensor,
    teacher_names: Sequence[str],
) -> dict[str, float | int]:
    """The gate's weights against the oracles over the contested samples of one group.

    Args:
        weights: `[B, K]` the weights w under test (rows sum to 1 over present teachers).
        span_loglik, span_mask, present: as in `em_mixture_weights`.
        span_bytes: `[B]` UTF-8 bytes covered by each sample's spans.
        bits_per_byte: `[B, K]` each teacher's stored bits per byte of the sample.
        teacher_names: the K names, for the keys.

    Returns:
        `samples` (contested), `agreement` (share where argmax w is the oracle teacher), per teacher
        `mean_w/NAME`, `oracle_share/NAME` (share of samples it is the oracle teacher of) and
        `oracle_mixture_w/NAME` (mean EM weight), and the bits per byte on the spans of `gate`
        (w), `best_single` (the one fixed teacher lowest over the group), `oracle_teacher`
        (per-sample best single teacher) and `oracle_mixture` (per-sample EM weights). NaN
        figures where the group has no contested sample.
    """
    keep = contested(present, span_mask)
    names = list(teacher_names)
    out: dict[str, float | int] = {"samples": int(keep.sum())}
    if not bool(keep.any()):
        nan = float("nan")
        out["agreement"] = nan
        for name in names:
            out[f"mean_w/{name}"] = out[f"oracle_share/{name}"] = out[f"oracle_mixture_w/{name}"] = nan
        for key in ("gate", "best_single", "oracle_teacher", "oracle_mixture"):
            out[f"bpb/{key}"] = nan
        return out
    w, ll, mask = weights[keep].double(), span_loglik[keep], span_mask[keep]
    here, bpb = present[keep].bool(), bits_per_byte[keep]
    total_bytes = float(span_bytes[keep].double().sum())
    oracle = oracle_teacher(bpb, here)
    one_hot = torch.nn.functional.one_hot(oracle, len(names)).double()
    em = em_mixture_weights(ll, mask, here)
    out["agreement"] = float((w.argmax(dim=-1) == oracle).double().mean())
    for k, name in enumerate(names):
        out[f"mean_w/{name}"] = float(w[:, k].mean())
        out[f"oracle_share/{name}"] = float(one_hot[:, k].mean())
        out[f"oracle_mixture_w/{name}"] = float(em[:, k].mean())

    def bpb_of(mixture: torch.Tensor) -> float:
        return float(mixture_bits(mixture, ll, mask).sum()) / total_bytes

    # The best fixed teacher of the group, among those present on every one of its samples.
    always = [k for k in range(len(names)) if bool(here[:, k].all())]
    fixed = [
        bpb_of(torch.nn.functional.one_hot(torch.full_like(oracle, k), len(names)).double()) for k in always
    ]
    out["bpb/gate"] = bpb_of(w)
    out["bpb/best_single"] = min(fixed) if fixed else float("nan")
    out["bpb/oracle_teacher"] = bpb_of(one_hot)
    out["bpb/oracle_mixture"] = bpb_of(em)
    return out
