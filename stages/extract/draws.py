"""Tokens drawn from a teacher's full next-token distribution: the `sampled` target (RS-KD).

A top-k cache keeps the k most likely tokens and so describes a biased target: renormalised, it
gives every other token probability 0 and inflates the top-k. Drawing N tokens per row from the
full softmax, with replacement, gives instead an unbiased estimate of the whole distribution
(Anshumann et al. 2025, "Sparse Logit Sampling"): with c_v the count of token v,

    E[c_v / N] = p(v)   for every v of the vocabulary,

so the student's cross-entropy against c/N equals, in expectation, its cross-entropy against the
full teacher distribution. The proposal is the teacher itself, so every importance weight
p(v)/proposal(v) is 1 and the weighted target is exactly c/N.

Reproducible: a row's N uniforms come from a generator seeded by (seed, the sequence's token ids),
so the draws depend on the teacher, the text and the seed only — not on batching, rank or order.
The draw itself is an inverse-CDF lookup in float64, a function of (probabilities, uniforms).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the backends that draw, not by planning code
    import torch

DRAW_SEED = 0
"""Seed of the draws; part of the teacher key of a sampled cache."""


def row_uniforms(token_ids: np.ndarray, draws: int, seed: int = DRAW_SEED) -> np.ndarray:
    """`[n − 1, draws]` float64 uniforms in [0, 1) for the rows of one token sequence."""
    digest = hashlib.sha256(np.int64(seed).tobytes() + np.asarray(token_ids, np.int64).tobytes()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.random((max(len(token_ids) - 1, 0), draws))


def draw_tokens(logprobs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws from each row's distribution.

    Args:
        logprobs: `[R, V]` log-softmax rows (any float dtype; summed in float64).
        uniforms: `[R, N]` in [0, 1).

    Returns:
        `[R, N]` int64 token ids, id v drawn with probability exp(logprobs[r, v]).
    """
    import torch

    cdf = logprobs.double().exp().cumsum(dim=-1)
    # Scale by the row total: exact whatever rounding left Σ p a hair off 1.
    targets = uniforms.to(cdf.device, torch.float64) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, targets, right=True)
    return ids.clamp_(max=logprobs.shape[-1] - 1)


def count_draws(drawn_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[R, N]` drawn ids → (distinct ids, counts), both `[R, N]`: per row the distinct ids by
    count descending (ties: smaller id first), padded with id 0 and count 0."""
    drawn_ids = np.asarray(drawn_ids, np.int64)
    rows, n = drawn_ids.shape
    ids = np.sort(drawn_ids, axis=1)
    starts = np.ones_like(ids, dtype=bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run = np.cumsum(starts, axis=1) - 1  # which distinct id each sorted entry belongs to
    counts = np.zeros((rows, n), np.int64)
    np.add.at(counts, (np.repeat(np.arange(rows), n), run.ravel()), 1)
    distinct = np.zeros((rows, n), np.int64)
    distinct[np.nonzero(starts)[0], run[starts]] = ids[starts]
    order = np.lexsort((distinct, -counts), axis=1) if rows else np.zeros((0, n), np.int64)
    return (
        np.take_along_axis(distinct, order, axis=1).astype(np.int32),
        np.take_along_axis(counts, order, axis=1).astype(np.uint8),
    )
