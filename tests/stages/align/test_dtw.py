"""The vectorised MinED DTW against a cell-by-cell reference, and against offset alignment."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from stages.align.dtw import _accumulate, align_rows_by_dtw, dtw_path
from stages.align.offsets import align_rows_by_offsets
from stages.tokenization import tokenize_many_with_ends
from tests.stages.conftest import GEMMA, QWEN, SMOLLM2, corpus_like_texts


def reference_dtw(teacher: list[str], student: list[str]) -> list[tuple[int, int]]:
    """Cell by cell, as FuseLLM does it: O(n·m) Python, ties to the diagonal, then up, then left."""
    n, m = len(teacher), len(student)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0
    for i in range(n):
        for j in range(m):
            cost = Levenshtein.distance(teacher[i], student[j])
            acc[i + 1, j + 1] = cost + min(acc[i, j + 1], acc[i + 1, j], acc[i, j])
    acc = acc[1:, 1:]
    i, j, path = n - 1, m - 1, []
    while i > 0 or j > 0:
        path.append((i, j))
        options = [
            acc[i - 1, j - 1] if i > 0 and j > 0 else np.inf,
            acc[i - 1, j] if i > 0 else np.inf,
            acc[i, j - 1] if j > 0 else np.inf,
        ]
        move = int(np.argmin(options))
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    path.append((0, 0))
    return path[::-1]


def random_tokens(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices("ab c", k=rng.randint(0, 3))) for _ in range(n)]


def test_row_recurrence_matches_the_cell_recurrence():
    rng = np.random.default_rng(0)
    for n, m in ((1, 1), (1, 5), (5, 1), (7, 9), (23, 17)):
        cost = rng.integers(0, 4, size=(n, m))
        expected = np.full((n + 1, m + 1), 1 << 60, dtype=np.int64)
        expected[0, 0] = 0
        for i in range(n):
            for j in range(m):
                expected[i + 1, j + 1] = cost[i, j] + min(
                    expected[i, j], expected[i, j + 1], expected[i + 1, j]
                )
        assert _accumulate(cost).tolist() == expected[1:, 1:].tolist()


def test_path_matches_the_reference_including_ties():
    rng = random.Random(0)
    for _ in range(40):
        teacher, student = random_tokens(rng, rng.randint(1, 12)), random_tokens(rng, rng.randint(1, 12))
        teacher_index, student_index = dtw_path(teacher, student)
        assert list(zip(teacher_index.tolist(), student_index.tolist())) == reference_dtw(teacher, student)


def test_identical_sequences_align_on_the_diagonal():
    tokens = ["def", " f", "(", "x", "):", "\n", "   ", " return", " x"]
    alignment = align_rows_by_dtw(tokens, tokens)
    assert alignment.student_rows.tolist() == list(range(len(tokens) - 1))
    assert alignment.teacher_rows.tolist() == list(range(len(tokens) - 1))
    assert dtw_path([], tokens)[0].size == 0


def test_hard_alignment_needs_one_partner_and_equal_text():
    # Teacher " inter" + "national" against student " international": the student token has two
    # partners, so it gets no row; "!" matches one to one with equal text.
    alignment = align_rows_by_dtw([" inter", "national", "!", "?"], [" international", "!", "?"])
    assert alignment.student_rows.tolist() == [1] and alignment.teacher_rows.tolist() == [2]


def test_two_thousand_by_two_thousand_takes_seconds():
    rng = random.Random(1)
    teacher = ["".join(rng.choices("abcdef ", k=rng.randint(1, 6))) for _ in range(2000)]
    student = ["".join(rng.choices("abcdef ", k=rng.randint(1, 6))) for _ in range(2000)]
    started = time.perf_counter()
    teacher_index, student_index = dtw_path(teacher, student)
    assert time.perf_counter() - started < 20  # ~0.5 s on an idle 2-core machine
    assert (teacher_index[-1], student_index[-1]) == (1999, 1999)
    assert np.all(np.diff(teacher_index) >= 0) and np.all(np.diff(student_index) >= 0)


@pytest.mark.parametrize("teacher_name", [GEMMA, QWEN])
def test_dtw_and_offsets_agree_where_both_match_one_to_one(demo_tokenizers, demo_token_tables, teacher_name):
    student, teacher = demo_tokenizers[SMOLLM2], demo_tokenizers[teacher_name]
    student_texts, teacher_texts = demo_token_tables[SMOLLM2].texts, demo_token_tables[teacher_name].texts
    texts = corpus_like_texts()
    students = tokenize_many_with_ends(student, texts, add_special_tokens=True, max_tokens=None)
    teachers = tokenize_many_with_ends(teacher, texts, add_special_tokens=True, max_tokens=None)
    both = differ = 0
    for s, t in zip(students, teachers, strict=True):
        t_tokens = [teacher_texts[i] for i in t.ids]
        by_offsets = align_rows_by_offsets(t.ends, s.ends)
        by_dtw = align_rows_by_dtw(t_tokens, [student_texts[i] for i in s.ids])
        offset_row = dict(zip(by_offsets.student_rows.tolist(), by_offsets.teacher_rows.tolist()))
        for j, i in zip(by_dtw.student_rows.tolist(), by_dtw.teacher_rows.tolist()):
            if j not in offset_row:
                continue
            both += 1
            if offset_row[j] != i:
                # DTW cannot tell apart copies of one token in a run ("000000"): a zero-cost
                # shift inside the run. Anything else would be a real disagreement.
                low, high = sorted((offset_row[j], i))
                assert len(set(t_tokens[low : high + 1])) == 1, (j, i, offset_row[j])
                differ += 1
    assert both > 1000
    assert differ <= 0.005 * both
