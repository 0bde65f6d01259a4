"""Chunks: stretches of text that the student and every present teacher start and end at a token
boundary, the unit of chunk-level likelihood matching (ALM, Minixhofer et al. 2025).

On a chunk c the sum of a model's log-probabilities over its own tokens inside c is exactly its
log-likelihood of the chunk's text given the text before, ℓ(c) = log p(text of c | text before c),
whatever its tokenizer (stages/align/spans.py). So teacher and student compare there with nothing
mapped and no row dropped: every byte after the first common boundary lies in some chunk.

**Tokenisation bias at chunk ends.** A chunk that ends inside a word ("def" of "define") has a
likelihood that depends on how a tokenizer continues: one that can write "define" as one token
gives "def" + boundary little mass. ALM's correction (tokenkit's `merge_by_space_prob+append_space`):
σ(c) = P(the next token starts a new word: whitespace-initial or special), stored per teacher row by
stage one. Chunks are merged until every present teacher's σ at the chunk end exceeds a threshold
(the end is then a likely word boundary for all of them), and log σ at the end is added to both
sides, so the compared event is "the chunk's text, then a new word".

Conventions (spans.py): `ends[t]` is the character up to which the text is emitted once token t
is; token t belongs to chunk a iff c_a < ends[t] ≤ c_{a+1}; row i of a tokenisation predicts token
i + 1 and has the σ of what follows token i. The student's row j belongs to the chunk of token j + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.align.spans import common_boundaries, span_logliks

__all__ = ["ChunkTeacher", "Chunks", "chunk_sample"]


@dataclass(frozen=True)
class ChunkTeacher:
    """What chunking reads of one present teacher on one sample (a teacher shard's row)."""

    token_ends: np.ndarray
    """[n] non-decreasing token ends."""
    target_logprobs: np.ndarray
    """[n − 1] row i = log p(token i + 1 | tokens ≤ i)."""
    truncated: bool
    space_logprob: np.ndarray | None = None
    """[n − 1] row i = log σ after token i; None: the cache holds no σ (no bias correction)."""


@dataclass(frozen=True)
class Chunks:
    """The chunks of one sample (C chunks, K' present teachers in the order given)."""

    boundaries: np.ndarray
    """[C + 1] int64 character offsets c_0 < … < c_C (after merging); C = 0: no chunk."""
    row_chunk: np.ndarray
    """[n_s − 1] int64, the chunk of student row j's next token, −1 outside every chunk (the
    context before c_0, or past c_C)."""
    teacher_loglik: np.ndarray
    """[K', C] float32 ℓ_k(c), each teacher's log-likelihood of each chunk."""
    teacher_space: np.ndarray
    """[K', C] float32 log σ_k at each chunk's end; 0 where no correction applies (no σ asked for,
    or the student or a teacher has no row after the chunk: the end of the text)."""
    end_row: np.ndarray
    """[C] int64 the student row after each chunk (whose σ the student adds), −1 where no
    correction applies."""
    covered_bytes: int
    """UTF-8 bytes of the text from c_0 to c_C."""

    @property
    def count(self) -> int:
        return len(self.boundaries) - 1 if len(self.boundaries) >= 2 else 0


def chunk_sample(
    text: str,
    student_ends: np.ndarray,
    student_truncated: bool,
    teachers: Sequence[ChunkTeacher],
    space_threshold: float | None,
) -> Chunks:
    """The chunks of one sample over the student's and the present teachers' tokenisations.

    Args:
        text: the sample's text (for the covered bytes).
        student_ends: `[n_s]` the student's token ends.
        student_truncated: whether the student's tokenisation was cut at its token limit.
        teachers: the present teachers.
        space_threshold: merge chunks until every teacher's σ at the end exceeds this, and add
            log σ at the ends (every teacher must then have `space_logprob`); None: plain chunks,
            no correction.

    Returns:
        `Chunks`; no chunk (C = 0) when the tokenisations share fewer than two boundaries.
    """
    student_ends = np.asarray(student_ends, dtype=np.int64)
    correct = space_threshold is not None
    if correct and any(t.space_logprob is None for t in teachers):
        raise ValueError("chunk bias correction needs every teacher's space_logprob (σ)")
    boundaries = common_boundaries(
        [student_ends, *(t.token_ends for t in teachers)],
        [student_truncated, *(t.truncated for t in teachers)],
    )
    # The row after boundary c of each tokenisation: its last token ending at or before c.
    rows_after = [_row_at(t.token_ends, boundaries) for t in teachers]
    if correct and len(boundaries) > 2:
        space = np.stack(
            [_space_at(t, rows) for t, rows in zip(teachers, rows_after, strict=True)]
        )  # [K', C + 1]
        inner = np.zeros(len(boundaries), dtype=bool)
        inner[1:-1] = (space[:, 1:-1] > np.log(space_threshold)).all(axis=0)
        keep = inner.copy()
        keep[[0, -1]] = True
        boundaries = boundaries[keep]
        rows_after = [rows[keep] for rows in rows_after]
    chunks = max(len(boundaries) - 1, 0)
    n_rows = max(len(student_ends) - 1, 0)
    row_chunk = np.full(n_rows, -1, dtype=np.int64)
    if chunks == 0:
        empty = np.zeros((len(teachers), 0), np.float32)
        return Chunks(np.zeros(0, np.int64), row_chunk, empty, empty, np.zeros(0, np.int64), 0)
    next_ends = student_ends[1:]
    inside = (next_ends > boundaries[0]) & (next_ends <= boundaries[-1])
    row_chunk[inside] = np.searchsorted(boundaries, next_ends[inside], side="left") - 1
    loglik = np.stack([span_logliks(t.token_ends, t.target_logprobs, boundaries) for t in teachers]).astype(
        np.float32
    )
    space = np.zeros((len(teachers), chunks), np.float32)
    end_row = np.full(chunks, -1, dtype=np.int64)
    if correct:
        student_rows = _row_at(student_ends, boundaries[1:])
        values = np.stack([_space_at(t, rows[1:]) for t, rows in zip(teachers, rows_after, strict=True)])
        usable = (student_rows < n_rows) & np.isfinite(values).all(axis=0)
        space[:, usable] = values[:, usable]
        end_row[usable] = student_rows[usable]
    covered = len(text[boundaries[0] : boundaries[-1]].encode("utf-8"))
    return Chunks(boundaries, row_chunk, loglik, space, end_row, covered)


def _row_at(ends: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per offset, the row of the last token ending at or before it (−1: none)."""
    return np.searchsorted(np.asarray(ends, dtype=np.int64), offsets, side="right") - 1


def _space_at(teacher: ChunkTeacher, rows: np.ndarray) -> np.ndarray:
    """log σ of `teacher` at `rows`; −inf where the row does not exist (the end of its text),
    which never passes a merge threshold and marks the end as uncorrectable."""
    assert teacher.space_logprob is not None
    values = np.asarray(teacher.space_logprob, dtype=np.float64)
    valid = (rows >= 0) & (rows < len(values))
    return np.where(valid, values[np.clip(rows, 0, max(len(values) - 1, 0))] if len(values) else 0.0, -np.inf)
