"""How much of one teacher reaches the student: the rates the loader logs and `inspect` shows.

- aligned-position rate: student rows that have a teacher row predicting from the same
  character / all student rows. The rest have the teacher absent.
- mapped-mass rate: over aligned rows, the mean share of the teacher's top-k probability mass
  that lands on a student id (the rest sits on teacher tokens the vocab map sends to −1).
- unmapped-id rate: top-k entries at aligned rows whose teacher id maps to −1 / all entries.
- available rate: student rows that end up with a target (aligned and some mass mapped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast

from stages.align.sample import AlignedTargets, align_sample
from stages.tokenization import tokenize_many_with_ends

__all__ = ["AlignmentStats", "alignment_stats_for_teacher", "summarize_alignment"]


@dataclass(frozen=True)
class AlignmentStats:
    """Counts over a set of samples for one (teacher, student) pair; rates derive from them."""

    n_samples: int
    n_student_rows: int
    n_aligned_rows: int
    n_available_rows: int
    mapped_mass: float
    n_candidates: int
    n_unmapped: int

    @property
    def aligned_rate(self) -> float:
        return self.n_aligned_rows / self.n_student_rows if self.n_student_rows else 0.0

    @property
    def available_rate(self) -> float:
        return self.n_available_rows / self.n_student_rows if self.n_student_rows else 0.0

    @property
    def mapped_mass_rate(self) -> float:
        return self.mapped_mass / self.n_aligned_rows if self.n_aligned_rows else 0.0

    @property
    def unmapped_id_rate(self) -> float:
        return self.n_unmapped / self.n_candidates if self.n_candidates else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Counts and rates, flat, for JSON logs and polars tables."""
        return {
            **asdict(self),
            "aligned_rate": self.aligned_rate,
            "available_rate": self.available_rate,
            "mapped_mass_rate": self.mapped_mass_rate,
            "unmapped_id_rate": self.unmapped_id_rate,
        }


def summarize_alignment(samples: Iterable[AlignedTargets]) -> AlignmentStats:
    """Add up the counts of aligned samples of one teacher."""
    totals = dict(
        n_samples=0, n_student_rows=0, n_aligned_rows=0, n_available_rows=0, n_candidates=0, n_unmapped=0
    )
    mapped_mass = 0.0
    for sample in samples:
        totals["n_samples"] += 1
        totals["n_student_rows"] += sample.n_rows
        totals["n_aligned_rows"] += sample.n_aligned
        totals["n_available_rows"] += int(sample.available.sum())
        totals["n_candidates"] += sample.n_candidates
        totals["n_unmapped"] += sample.n_unmapped
        mapped_mass += sample.mapped_mass
    return AlignmentStats(mapped_mass=mapped_mass, **totals)


def alignment_stats_for_teacher(
    student_tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    teacher_token_ends: Sequence[np.ndarray],
    teacher_topk_ids: Sequence[np.ndarray],
    teacher_topk_logprobs: Sequence[np.ndarray],
    vocab_map: np.ndarray,
    *,
    add_special_tokens: bool = False,
    max_tokens: int | None = None,
) -> AlignmentStats:
    """Rates of one teacher's shard rows against a student tokenizer (what `inspect` shows).

    Per sample: texts[b] the corpus text; teacher_token_ends[b] [n_t]; teacher_topk_ids[b] and
    teacher_topk_logprobs[b] either [n_t − 1, k] or the shard's flat [(n_t − 1) · k].
    """
    students = tokenize_many_with_ends(
        student_tokenizer, texts, add_special_tokens=add_special_tokens, max_tokens=max_tokens
    )
    aligned = []
    for student, ends, ids, logprobs in zip(
        students, teacher_token_ends, teacher_topk_ids, teacher_topk_logprobs, strict=True
    ):
        rows = max(len(ends) - 1, 0)
        aligned.append(
            align_sample(
                student.ends,
                np.asarray(ends),
                _as_rows(ids, rows),
                _as_rows(logprobs, rows),
                vocab_map,
                target="renormalised",
            )
        )
    return summarize_alignment(aligned)


def _as_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """[rows, k] view of a per-sample top-k array given flat or already as rows."""
    values = np.asarray(values)
    return (
        values.reshape(rows, -1) if rows else values.reshape(0, values.shape[-1] if values.ndim == 2 else 1)
    )
