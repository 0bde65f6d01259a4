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


def diagnostic_sums(
    weights: torch.Tensor,
    span_loglik: torch.Tensor,
    span_mask: torch.Tensor,
    span_bytes: torch.Tensor,
    bits_per_byte: torch.Tensor,
    present: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The additive float64 sums every gate diagnostic is a ratio of, over the contested samples.

    Args: as in `gate_diagnostics`. Returns `contested`, `agree`, `span_bytes`, `bits_gate`,
    `bits_oracle_teacher`, `bits_oracle_mixture` (scalars) and per teacher `weight_sum`,
    `oracle_count`, `em_weight_sum`, `bits_single` and `bytes_single` (`[K]`: each teacher alone
    over the contested samples it is present on). Sums of two groups add up to the sums of their
    union, so a training log window, every rank and a report group all divide the same sums.
    """
    k = weights.shape[-1]
    keep = contested(present, span_mask) & (weights.sum(dim=-1) > 0)
    w = weights[keep].double()
    ll, mask = span_loglik[keep].double(), span_mask[keep].bool()
    here, size = present[keep].bool(), span_bytes[keep].double()
    oracle = oracle_teacher(bits_per_byte[keep], here)
    one_hot = torch.nn.functional.one_hot(oracle, k).double()
    em = em_mixture_weights(ll, mask, here)
    bits_single = torch.zeros(k, dtype=torch.float64)
    bytes_single = torch.zeros(k, dtype=torch.float64)
    for teacher in range(k):
        has = here[:, teacher]
        alone = torch.nn.functional.one_hot(torch.full_like(oracle[has], teacher), k).double()
        bits_single[teacher] = mixture_bits(alone, ll[has], mask[has]).sum()
        bytes_single[teacher] = size[has].sum()
    return {
        "contested": keep.sum().double(),
        "agree": (w.argmax(dim=-1) == oracle).sum().double()
        if len(w)
        else torch.zeros((), dtype=torch.float64),
        "span_bytes": size.sum(),
        "bits_gate": mixture_bits(w, ll, mask).sum(),
        "bits_oracle_teacher": mixture_bits(one_hot, ll, mask).sum(),
        "bits_oracle_mixture": mixture_bits(em, ll, mask).sum(),
        "weight_sum": w.sum(dim=0),
        "oracle_count": one_hot.sum(dim=0),
        "em_weight_sum": em.sum(dim=0),
        "bits_single": bits_single,
        "bytes_single": bytes_single,
    }


SUM_SIZES = {
    "contested": 1,
    "agree": 1,
    "span_bytes": 1,
    "bits_gate": 1,
    "bits_oracle_teacher": 1,
    "bits_oracle_mixture": 1,
    "weight_sum": 0,
    "oracle_count": 0,
    "em_weight_sum": 0,
    "bits_single": 0,
    "bytes_single": 0,
}
"""The sums of `diagnostic_sums` and their sizes (0: one per teacher)."""


def diagnostics_from_sums(
    sums: dict[str, torch.Tensor], teacher_names: Sequence[str]
) -> dict[str, float | int]:
    """The gate's weights against the oracles from `diagnostic_sums` (of one or many groups).

    Returns `samples` (contested), `agreement` (share where argmax w is the oracle teacher), per
    teacher `mean_w/NAME`, `oracle_share/NAME` (share of samples it is the oracle teacher of) and
    `oracle_mixture_w/NAME` (mean EM weight), and the bits per byte on the spans of `gate` (w),
    `best_single` (the one fixed teacher lowest over the samples it is present on),
    `oracle_teacher` (per-sample best single teacher) and `oracle_mixture` (per-sample EM
    weights). NaN figures where no sample is contested.
    """
    samples, size = float(sums["contested"]), float(sums["span_bytes"])
    nan = float("nan")
    out: dict[str, float | int] = {"samples": int(samples)}
    out["agreement"] = float(sums["agree"]) / samples if samples else nan
    for k, name in enumerate(teacher_names):
        out[f"mean_w/{name}"] = float(sums["weight_sum"][k]) / samples if samples else nan
        out[f"oracle_share/{name}"] = float(sums["oracle_count"][k]) / samples if samples else nan
        out[f"oracle_mixture_w/{name}"] = float(sums["em_weight_sum"][k]) / samples if samples else nan
    singles = [
        float(bits) / float(count)
        for bits, count in zip(sums["bits_single"].tolist(), sums["bytes_single"].tolist(), strict=True)
        if count > 0
    ]
    for key in ("gate", "oracle_teacher", "oracle_mixture"):
        out[f"bpb/{key}"] = float(sums[f"bits_{key}"]) / size if size else nan
    out["bpb/best_single"] = min(singles) if singles else nan
    return out


def gate_diagnostics(
    weights: torch.Tensor,
    span_loglik: torch.Tensor,
    span_mask: torch.Tensor,
    span_bytes: torch.Tensor,
    bits_per_byte: torch.Tensor,
    present: torch.Tensor,
    teacher_names: Sequence[str],
) -> dict[str, float | int]:
    """The gate's weights against the oracles over the contested samples of one group
    (`diagnostics_from_sums` of `diagnostic_sums`).

    Args:
        weights: `[B, K]` the weights w under test (rows sum to 1 over present teachers).
        span_loglik, span_mask, present: as in `em_mixture_weights`.
        span_bytes: `[B]` UTF-8 bytes covered by each sample's spans.
        bits_per_byte: `[B, K]` each teacher's stored bits per byte of the sample.
        teacher_names: the K names, for the keys.
    """
    sums = diagnostic_sums(weights, span_loglik, span_mask, span_bytes, bits_per_byte, present)
    return diagnostics_from_sums(sums, teacher_names)
