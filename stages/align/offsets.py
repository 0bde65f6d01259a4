"""Position alignment by character offsets: which teacher row serves which student row.

Row i of a tokenisation is "tokens ≤ i → distribution of token i+1", so a text of n tokens has
n − 1 rows and the last token has none. Row i predicts the text that starts at char `ends[i]`
(see `stages/tokenization.py` for what `ends` means). A teacher row and a student row predict the
same thing exactly when they start at the same character **and** both sit at a real character
boundary. Where a character is split over several tokens (an emoji as four byte-level pieces),
all the pieces share one end and the rows of all but the last one predict the rest of a half-
emitted character; only the last token with a given end starts a clean continuation. So:

    student row j takes teacher row i  ⇔  ends_t[i] == ends_s[j],
                                          ends_t[i] < ends_t[i+1] and ends_s[j] < ends_s[j+1].

Everywhere else the teacher is absent at j: no made-up target (docs/design.md §5). Boundary ends are
strictly increasing, so the match is a merge of two sorted lists (`searchsorted`), linear in
practice and without a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RowAlignment", "align_rows_by_offsets", "boundary_rows", "same_next_token"]


@dataclass(frozen=True)
class RowAlignment:
    """Matched rows of one sample, in increasing order of both.

    student_rows: [m] int64 student row indices (< n_student − 1).
    teacher_rows: [m] int64 teacher row indices (< n_teacher − 1), teacher_rows[a] serves
        student_rows[a].
    n_student_rows: n_student − 1, the number of student rows that could have been served.
    """

    student_rows: np.ndarray
    teacher_rows: np.ndarray
    n_student_rows: int

    @property
    def aligned_rate(self) -> float:
        """Fraction of student rows that have a teacher row."""
        return len(self.student_rows) / self.n_student_rows if self.n_student_rows else 0.0


def boundary_rows(ends: np.ndarray) -> np.ndarray:
    """[n − 1] bool: row i starts a clean continuation (the last token with its end)."""
    ends = np.asarray(ends)
    return ends[:-1] < ends[1:]


def align_rows_by_offsets(teacher_ends: np.ndarray, student_ends: np.ndarray) -> RowAlignment:
    """Match teacher rows to student rows that predict text from the same character.

    teacher_ends: [n_t] int, non-decreasing covered-text ends of the teacher's tokens.
    student_ends: [n_s] int, the same for the student's tokenisation of the same text.
    """
    teacher_ends = np.asarray(teacher_ends, dtype=np.int64)
    student_ends = np.asarray(student_ends, dtype=np.int64)
    n_student_rows = max(len(student_ends) - 1, 0)
    empty = np.zeros(0, dtype=np.int64)
    if len(teacher_ends) < 2 or len(student_ends) < 2:
        return RowAlignment(empty, empty, n_student_rows)
    teacher_rows = np.flatnonzero(boundary_rows(teacher_ends))
    student_rows = np.flatnonzero(boundary_rows(student_ends))
    teacher_at = teacher_ends[teacher_rows]
    student_at = student_ends[student_rows]
    # Both lists are strictly increasing: each student end finds its only possible partner.
    slot = np.searchsorted(teacher_at, student_at)
    inside = slot < len(teacher_at)
    matched = np.zeros(len(student_at), dtype=bool)
    matched[inside] = teacher_at[slot[inside]] == student_at[inside]
    return RowAlignment(
        student_rows=student_rows[matched],
        teacher_rows=teacher_rows[slot[matched]],
        n_student_rows=n_student_rows,
    )


def same_next_token(
    alignment: RowAlignment,
    teacher_ids: np.ndarray,
    student_ids: np.ndarray,
    teacher_texts: np.ndarray,
    student_texts: np.ndarray,
) -> RowAlignment:
    """The aligned rows whose next token is the same string on both sides (exact-token KD).

    Such a row starts at the same character in both tokenisations and both write the next stretch
    of text as one token with the same string: the next chunk is one token on both sides, and the
    teacher's distribution over its next token is a distribution over the student's next token
    (for the candidates both vocabularies share). Special tokens (empty text) never match.

    teacher_ids, student_ids: `[n]` the two tokenisations' ids; teacher_texts, student_texts:
    object arrays of the text every id emits (`token_text.TokenTable.texts`).
    """
    if len(alignment.student_rows) == 0:
        return alignment
    theirs = teacher_texts[np.asarray(teacher_ids)[alignment.teacher_rows + 1]]
    ours = student_texts[np.asarray(student_ids)[alignment.student_rows + 1]]
    keep = (theirs == ours) & (ours != "")
    return RowAlignment(alignment.student_rows[keep], alignment.teacher_rows[keep], alignment.n_student_rows)
