"""Spans of text every teacher predicts whole: the unit of the `likelihood` gate objective.

Teachers cut a text at different characters, so their per-token log-probabilities are not
comparable (a teacher with longer tokens has fewer, more negative ones). They become comparable
on a stretch of text that every teacher starts and ends at a token boundary: there, the sum of a
teacher's target log-probabilities over its tokens inside the stretch is exactly

    ll_s = log p_teacher(text of s | text before s),

whatever its tokenizer. A **common boundary** is a character offset that is a token end of every
present teacher; spans run between consecutive common boundaries (docs/design.md §5, §7.6).

Conventions (stages/tokenization.py, stages/align/offsets.py): `token_ends[t]` is the character
up to which the text is emitted once token t is; the pieces of a split character share the end of
the token that completes it, so "all tokens with end ≤ c" spell exactly `text[:c]` at every end c.
Row i of a teacher's `target_logprobs` is the log-probability of token i + 1, which emits the text
from `token_ends[i]` to `token_ends[i + 1]`; token 0 is never predicted. Token t therefore belongs
to span (c_a, c_{a+1}] iff c_a < token_ends[t] ≤ c_{a+1}. Every common boundary is ≥ each
teacher's first token end, so tokens up to the first common boundary (token 0 among them) are the
context of the first span and are predicted by no span.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import numpy as np

__all__ = ["common_boundaries", "span_logliks"]


def common_boundaries(
    ends_per_teacher: Sequence[np.ndarray], truncated: Sequence[bool] | None = None
) -> np.ndarray:
    """The character offsets where every teacher has a token boundary, in increasing order.

    Args:
        ends_per_teacher: per present teacher, its `[n_k]` non-decreasing token ends of one text.
        truncated: per teacher, whether its tokenisation was cut at its token limit. The last end
            of a cut tokenisation may belong to a split character whose completing token was cut
            away (ends come from the whole text), so it is not a boundary of that teacher.

    Returns:
        `[S + 1]` int64 boundaries c_0 < … < c_S: span s is the text between c_s and c_{s+1}.
        Fewer than two common offsets (or no teacher) gives fewer than two boundaries: no span.
    """
    if not ends_per_teacher:
        return np.zeros(0, np.int64)
    truncated = [False] * len(ends_per_teacher) if truncated is None else list(truncated)
    if len(truncated) != len(ends_per_teacher):
        raise ValueError(
            f"truncated has {len(truncated)} entries for {len(ends_per_teacher)} teachers: give one per teacher"
        )
    per_teacher = []
    for ends, cut in zip(ends_per_teacher, truncated, strict=True):
        unique = np.unique(np.asarray(ends, dtype=np.int64))
        per_teacher.append(unique[:-1] if cut else unique)
    return reduce(np.intersect1d, per_teacher)


def span_logliks(token_ends: np.ndarray, target_logprobs: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """One teacher's log-likelihood of each span: its target logprobs summed over the span's tokens.

    Args:
        token_ends: `[n]` the teacher's non-decreasing token ends.
        target_logprobs: `[n − 1]`, row i = log p(token i + 1 | tokens ≤ i).
        boundaries: `[S + 1]` increasing offsets, each a token end of this teacher and none before
            its first token end (`common_boundaries` gives such).

    Returns:
        `[S]` float64: entry s = Σ target_logprobs[t − 1] over tokens t with
        boundaries[s] < token_ends[t] ≤ boundaries[s + 1]; empty when S = 0.
    """
    ends = np.asarray(token_ends, dtype=np.int64)
    logprobs = np.asarray(target_logprobs, dtype=np.float64)
    bounds = np.asarray(boundaries, dtype=np.int64)
    if len(logprobs) != max(len(ends) - 1, 0):
        raise ValueError(
            f"target_logprobs has {len(logprobs)} rows for {len(ends)} tokens: it needs one per token "
            "after the first"
        )
    if len(bounds) < 2:
        return np.zeros(0, np.float64)
    # count[a] = tokens with end ≤ c_a; those are tokens 0 … count[a] − 1, and the predicted ones
    # among them (1 … count[a] − 1) sum to cumulative[count[a] − 1].
    count = np.searchsorted(ends, bounds, side="right")
    if count[0] < 1 or not np.array_equal(ends[count - 1], bounds):
        raise ValueError(
            "every span boundary must be one of the teacher's token ends, at or after its first: "
            "build them with common_boundaries over the teachers' token_ends"
        )
    cumulative = np.concatenate([[0.0], np.cumsum(logprobs)])
    return np.diff(cumulative[count - 1])
