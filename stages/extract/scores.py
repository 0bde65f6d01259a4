"""Per-sample teacher scores (docs/design.md §3.3): what the gate sees of a teacher on a sample.

All four are means over the sample's rows (row i predicts token i+1), accumulated in float64.
A sample with fewer than two tokens has no rows: its scores are NaN ("the teacher says nothing
here"), which distill treats as the teacher being absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stages.extract.backends.base import TopkRows


@dataclass(frozen=True)
class SampleScores:
    ce: float
    """Mean next-token cross-entropy in nats, from the full softmax (the target's logprob)."""
    bits_per_byte: float
    """Total nats / ln 2 / UTF-8 bytes of the predicted span: tokenizer-neutral."""
    topk_mass: float
    """Mean probability mass the top-k hold, Σ exp(top-k logprobs)."""
    entropy_topk: float
    """Mean entropy in nats of the top-k distribution renormalised to sum to one."""


NO_ROWS = SampleScores(math.nan, math.nan, math.nan, math.nan)


def sample_scores(rows: TopkRows, predicted_bytes: int) -> SampleScores:
    """Scores of one sample; ``predicted_bytes`` = UTF-8 bytes of the text its rows predict."""
    if rows.n_rows == 0:
        return NO_ROWS
    target = rows.target_logprobs.astype(np.float64)
    topk = rows.topk_logprobs.astype(np.float64)
    nats = -float(target.sum())
    # Renormalise in log space (subtract the row's logsumexp) so that a tiny top-k mass does
    # not underflow before the division.
    log_mass = np.logaddexp.reduce(topk, axis=1)
    log_p = topk - log_mass[:, None]
    entropy = -(np.exp(log_p) * log_p).sum(axis=1)
    return SampleScores(
        ce=nats / rows.n_rows,
        bits_per_byte=nats / math.log(2) / predicted_bytes if predicted_bytes else math.nan,
        topk_mass=float(np.exp(log_mass).mean()),
        entropy_topk=float(entropy.mean()),
    )


def predicted_span_bytes(text: str, token_ends: np.ndarray) -> int:
    """UTF-8 bytes of the text predicted by a sample's rows: after token 0, up to the last token.

    Token 0 is never predicted (it is the context of row 0); with a BOS first that is nothing,
    so the span is the whole (possibly truncated) text.
    """
    if len(token_ends) < 2:
        return 0
    return len(text[int(token_ends[0]) : int(token_ends[-1])].encode("utf-8"))
