"""One sample, one teacher: the teacher's top-k rows as targets at the student's rows.

Runs in distill's DataLoader workers for every (sample, teacher), so it is numpy only, with no
Python loop over positions. Per student row j (docs/design.md §5):

- the teacher row i that predicts from the same character (`offsets.align_rows_by_offsets`; or
  FuseLLM's MinED DTW pairing, `dtw.align_rows_by_dtw`, under `distill.aligner=dtw`);
  no such row → `available[j]` is False and the row carries nothing (no copy target);
- the teacher's top-k candidates mapped to student ids (`vocab_map`); a candidate mapped to −1
  (or outside the map) leaves the support and its probability is counted as unmapped mass;
- the target over the support S (the mapped candidates; candidates landing on one student id
  are summed in probability space, never dropped) and one "rest" bucket, by `target` kind:
    `renormalised` (FuseLLM): p(v) = exp(lp_v) / Σ_S exp(lp), rest = 0. Biased: it says every
        token outside the top-k has probability 0 and inflates the top-k by 1 / Σ_S exp(lp);
    `residual`: p(v) = exp(lp_v) exactly as stored (a full-vocabulary log-softmax), and
        rest = 1 − Σ_S p(v), the mass the teacher put on all other tokens (and on unmapped
        candidates). On a cache of drawn tokens (`extract.draws`) lp_v = log(count_v / N), so
        this is the empirical distribution of the draws, an unbiased estimate of the teacher's
        (the `sampled` target, stages/extract/draws.py);
- an aligned row whose candidates all map to −1 is not available either.
Support entries are sorted by probability, descending; padding is id 0 with probability 0.
The student's loss against (S, p, rest) is `fusion.fusion_cross_entropy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.align.offsets import RowAlignment, align_rows_by_offsets
from stages.distill.settings import TopkTarget

__all__ = [
    "AlignedTargets",
    "align_sample",
    "no_targets",
    "relative_mass",
    "renormalise",
    "residual_target",
]

_NO_ID = np.iinfo(np.int64).max  # sorts after every real id


@dataclass(frozen=True)
class AlignedTargets:
    """Teacher targets at the student's rows of one sample (k = the teacher's top-k).

    support_ids: [n_s − 1, k] int64 student vocabulary ids.
    support_probs: [n_s − 1, k] float32; with `rest_mass`, each available row sums to 1, others
        are all zero.
    rest_mass: [n_s − 1] float32, the target's mass outside the support (0 for `renormalised`).
    available: [n_s − 1] bool, the teacher has a target at this student row.
    n_aligned: student rows with a teacher row at the same character (available or not).
    mapped_mass: Σ over aligned rows of (top-k mass on mapped candidates / top-k mass).
    n_candidates: top-k entries looked at (n_aligned · k).
    n_unmapped: of those, entries whose teacher id maps to −1.
    """

    support_ids: np.ndarray
    support_probs: np.ndarray
    rest_mass: np.ndarray
    available: np.ndarray
    n_aligned: int
    mapped_mass: float
    n_candidates: int
    n_unmapped: int

    @property
    def n_rows(self) -> int:
        return len(self.available)


def align_sample(
    student_ends: np.ndarray,
    teacher_ends: np.ndarray,
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    vocab_map: np.ndarray,
    target: TopkTarget,
    alignment: RowAlignment | None = None,
) -> AlignedTargets:
    """Express one teacher's top-k rows at the student's rows, in the student's vocabulary.

    student_ends: [n_s] int covered-text ends of the student's tokens (`tokenize_with_ends`).
    teacher_ends: [n_t] int the teacher shard's `token_ends`.
    topk_ids: [n_t − 1, k] int teacher ids; row i = distribution of teacher token i + 1.
    topk_logprobs: [n_t − 1, k] float log-softmax over the full teacher vocabulary.
    vocab_map: [V_t] int32 teacher id → student id, −1 unmapped (`vocab_map.build_vocab_map`).
    target: `renormalised` or `residual` (module docstring); `distill.target=sampled` is
        `residual` over a cache of drawn tokens.
    alignment: which teacher row each student row takes; None: `align_rows_by_offsets` of the
        two `ends` (`distill.aligner=offsets`); `dtw.align_rows_by_dtw` for `distill.aligner=dtw`.
    """
    topk_ids = np.asarray(topk_ids)
    topk_logprobs = np.asarray(topk_logprobs)
    n_teacher_rows = max(len(teacher_ends) - 1, 0)
    if topk_ids.ndim != 2 or topk_ids.shape != topk_logprobs.shape or len(topk_ids) != n_teacher_rows:
        raise ValueError(
            "topk_ids and topk_logprobs must both be [len(teacher_ends) - 1, k] (one row per "
            f"teacher token but the last), got {topk_ids.shape} and {topk_logprobs.shape} for "
            f"{len(teacher_ends)} teacher tokens: reshape the shard's flat lists to [n - 1, k]"
        )
    k = topk_ids.shape[1]
    n_rows = max(len(student_ends) - 1, 0)
    if alignment is None:
        alignment = align_rows_by_offsets(teacher_ends, student_ends)
    m = len(alignment.student_rows)

    teacher_ids = topk_ids[alignment.teacher_rows].astype(np.int64)  # [m, k]
    logprobs = topk_logprobs[alignment.teacher_rows].astype(np.float64)  # [m, k]
    in_map = (teacher_ids >= 0) & (teacher_ids < len(vocab_map))
    student_ids = np.where(in_map, vocab_map[np.clip(teacher_ids, 0, len(vocab_map) - 1)], -1).astype(
        np.int64
    )
    mapped = student_ids >= 0

    mass = relative_mass(logprobs)
    kept = np.where(mapped, mass, 0.0)
    total_mass, kept_mass = mass.sum(axis=1), kept.sum(axis=1)
    usable = kept_mass > 0  # [m]
    if target == "renormalised":
        probs, rest = renormalise(kept), np.zeros(m)
    else:
        probs, rest = residual_target(logprobs, mapped)

    merged_ids, merged_probs = _merge_duplicates(np.where(kept > 0, student_ids, _NO_ID), probs)

    support_ids = np.zeros((n_rows, k), dtype=np.int64)
    support_probs = np.zeros((n_rows, k), dtype=np.float32)
    rest_mass = np.zeros(n_rows, dtype=np.float32)
    available = np.zeros(n_rows, dtype=bool)
    rows = alignment.student_rows[usable]
    support_ids[rows] = merged_ids[usable]
    support_probs[rows] = merged_probs[usable]
    rest_mass[rows] = rest[usable]
    available[rows] = True
    fraction = np.divide(kept_mass, total_mass, out=np.zeros(m), where=total_mass > 0)
    return AlignedTargets(
        support_ids=support_ids,
        support_probs=support_probs,
        rest_mass=rest_mass,
        available=available,
        n_aligned=m,
        mapped_mass=float(fraction.sum()),
        n_candidates=m * k,
        n_unmapped=int((~mapped).sum()),
    )


def no_targets(n_rows: int) -> AlignedTargets:
    """A present teacher with no token-level target at any of `n_rows` rows (support width 0):
    what objectives that compare teachers beyond single tokens (`chunk`) give the batch."""
    return AlignedTargets(
        support_ids=np.zeros((n_rows, 0), dtype=np.int64),
        support_probs=np.zeros((n_rows, 0), dtype=np.float32),
        rest_mass=np.zeros(n_rows, dtype=np.float32),
        available=np.zeros(n_rows, dtype=bool),
        n_aligned=0,
        mapped_mass=0.0,
        n_candidates=0,
        n_unmapped=0,
    )


def relative_mass(logprobs: np.ndarray) -> np.ndarray:
    """[m, k] exp(lp − the row's best lp): each candidate's mass relative to the row's best.

    Exact ratios with no overflow whatever the scale of the logprobs; −inf entries get 0, and so
    does every entry of a row with no finite logprob.
    """
    finite = np.isfinite(logprobs)
    row_top = np.where(finite, logprobs, -np.inf).max(axis=1, initial=-np.inf, keepdims=True)
    return np.where(finite, np.exp(logprobs - np.where(np.isfinite(row_top), row_top, 0.0)), 0.0)


def renormalise(mass: np.ndarray) -> np.ndarray:
    """[m, k] the `renormalised` target (FuseLLM): each row of `mass` scaled to sum 1, so the
    kept top-k holds all the probability; a row of zeros stays zeros."""
    total = mass.sum(axis=1, keepdims=True)
    return mass / np.where(total > 0, total, 1.0)


def residual_target(logprobs: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `residual` target: ([m, k] p = exp(lp) of the kept entries as stored, [m] rest mass).

    logprobs: [m, k] log-softmax over the full teacher vocabulary; keep: [m, k] bool.
    rest = 1 − Σ p is what the teacher put on every other token (and on dropped candidates).
    """
    finite = np.isfinite(logprobs)
    probs = np.where(keep & finite, np.exp(np.where(finite, logprobs, 0.0)), 0.0)
    # The 1/32-nat grid can leave Σ p a hair above 1: then there is no rest, and p is scaled.
    probs = probs / np.maximum(probs.sum(axis=1), 1.0)[:, None]
    return probs, np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)


def _merge_duplicates(ids: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the probabilities of equal ids per row, compact, sort by probability descending.

    ids: [m, k] int64 with `_NO_ID` for dropped entries; probs: [m, k] float64.
    Returns ([m, k] int64 ids, 0 for padding; [m, k] float32 probabilities, 0 for padding).
    """
    m, k = ids.shape
    if m == 0:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    order = np.argsort(ids, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    probs = np.take_along_axis(probs, order, axis=1)
    real = ids != _NO_ID
    starts = real.copy()
    starts[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    slot = np.cumsum(starts, axis=1) - 1  # where each entry lands after merging
    flat = (np.arange(m)[:, None] * k + slot)[real]
    summed = np.bincount(flat, weights=probs[real], minlength=m * k).reshape(m, k)
    merged_ids = np.zeros(m * k, dtype=np.int64)
    merged_ids[(np.arange(m)[:, None] * k + slot)[starts]] = ids[starts]
    merged_ids = merged_ids.reshape(m, k)
    by_prob = np.argsort(-summed, axis=1, kind="stable")
    return (
        np.take_along_axis(merged_ids, by_prob, axis=1),
        np.take_along_axis(summed, by_prob, axis=1).astype(np.float32),
    )
