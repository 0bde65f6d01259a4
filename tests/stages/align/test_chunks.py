"""Chunks over the student and the teachers: hand-checked boundaries, merging by σ and the σ at the
chunk ends, and on the real SmolLM2 and Qwen tokenizers the chunks cover every byte after the
first common boundary, with `\\n   ` written as one token by one and two by the other in one chunk."""

from __future__ import annotations

import numpy as np
import pytest

from stages.align.chunks import ChunkTeacher, chunk_sample
from stages.tokenization import tokenize_with_ends
from tests.stages.conftest import QWEN, SMOLLM2, corpus_like_texts


def teacher(ends, logprobs=None, space=None, truncated=False) -> ChunkTeacher:
    ends = np.asarray(ends)
    lp = np.log(np.full(len(ends) - 1, 0.5)) if logprobs is None else np.asarray(logprobs)
    return ChunkTeacher(ends, lp, truncated, None if space is None else np.log(np.asarray(space)))


def test_hand_example_rows_and_logliks() -> None:
    # "Hello world!": student Hel|lo|␣wor|ld|!, teacher Hello|␣world|!  → common ends 5, 12 (and 11? no).
    text = "Hello world!"
    student = np.array([3, 5, 9, 11, 12])
    t = teacher([5, 11, 12], np.log([0.25, 0.5]))
    chunks = chunk_sample(text, student, False, [t], None)
    assert chunks.boundaries.tolist() == [5, 11, 12]
    # Student rows predict tokens 1..4 (ends 5, 9, 11, 12): "lo" is context, "␣wor"+"ld" chunk 0, "!" chunk 1.
    assert chunks.row_chunk.tolist() == [-1, 0, 0, 1]
    np.testing.assert_allclose(chunks.teacher_loglik, np.log([[0.25, 0.5]]), rtol=1e-6)
    assert chunks.covered_bytes == len(" world!")
    assert (chunks.teacher_space == 0).all() and (chunks.end_row == -1).all()


def test_no_common_boundary_gives_no_chunk() -> None:
    chunks = chunk_sample("abc", np.array([1, 3]), False, [teacher([2, 3])], None)
    # Only 3 is shared: one boundary, no chunk; every row stays outside.
    assert chunks.count == 0 and (chunks.row_chunk == -1).all() and chunks.teacher_loglik.shape == (1, 0)


def test_merging_by_sigma_keeps_only_ends_every_teacher_trusts() -> None:
    # Everything cut at 1..6, one char per token; σ after each token per teacher.
    ends = np.arange(1, 7)
    a = teacher(ends, space=[0.9, 0.05, 0.9, 0.9, 0.9])
    b = teacher(ends, space=[0.9, 0.9, 0.05, 0.9, 0.9])
    chunks = chunk_sample("abcdef", ends, False, [a, b], 0.1)
    # Boundary 2 (A's σ 0.05) and 3 (B's σ 0.05) merge away; the first and last always stay.
    assert chunks.boundaries.tolist() == [1, 4, 5, 6]
    assert chunks.row_chunk.tolist() == [0, 0, 0, 1, 2]
    # Teacher log-likelihood of a merged chunk is the sum over its tokens.
    np.testing.assert_allclose(chunks.teacher_loglik[:, 0], 3 * np.log(0.5), rtol=1e-6)
    # σ at each end: rows 3 and 4 (after the tokens ending at 4 and 5); the text's last chunk has
    # no next row on either side: no correction there.
    np.testing.assert_allclose(chunks.teacher_space[:, :2], np.log([[0.9, 0.9], [0.9, 0.9]]), rtol=1e-6)
    assert chunks.teacher_space[:, 2].tolist() == [0.0, 0.0]
    assert chunks.end_row.tolist() == [3, 4, -1]


def test_sigma_correction_needs_sigma_of_every_teacher() -> None:
    with pytest.raises(ValueError, match="space_logprob"):
        chunk_sample("ab", np.array([1, 2]), False, [teacher([1, 2])], 0.1)


@pytest.mark.parametrize(
    ("text", "chunk"),
    [("x = 1\n    def f():", "\n   "), ('"""Doc."""\n    def f():', '."""\n   ')],
)
def test_newline_indent_is_one_chunk_for_smollm2_and_qwen(demo_tokenizers, text: str, chunk: str) -> None:
    student = tokenize_with_ends(demo_tokenizers[SMOLLM2], text, add_special_tokens=True, max_tokens=None)
    qwen = tokenize_with_ends(demo_tokenizers[QWEN], text, add_special_tokens=True, max_tokens=None)
    chunks = chunk_sample(text, student.ends, False, [teacher(qwen.ends)], None)
    pieces = [text[a:b] for a, b in zip(chunks.boundaries[:-1], chunks.boundaries[1:], strict=True)]
    assert chunk in pieces
    start, stop = chunks.boundaries[pieces.index(chunk)], chunks.boundaries[pieces.index(chunk) + 1]

    def cuts(ends: np.ndarray) -> set[int]:
        return {int(e) for e in ends if start < e < stop}

    # The two cut the chunk at different characters (`\n` | `   ` against `\n   `, `."""\n` | `   `
    # against `."""` | `\n   `), and at no shared one: one chunk, with no row dropped.
    assert cuts(qwen.ends) | cuts(student.ends) and not cuts(qwen.ends) & cuts(student.ends)


def test_chunks_cover_every_byte_after_the_first_common_boundary(demo_tokenizers) -> None:
    for text in corpus_like_texts():
        student = tokenize_with_ends(demo_tokenizers[SMOLLM2], text, add_special_tokens=True, max_tokens=None)
        qwen = tokenize_with_ends(demo_tokenizers[QWEN], text, add_special_tokens=True, max_tokens=None)
        chunks = chunk_sample(text, student.ends, False, [teacher(qwen.ends)], None)
        assert chunks.count > 0
        # The chunks tile text[c_0 : end]; the end is the end of the text.
        assert chunks.boundaries[-1] == len(text)
        assert (
            "".join(text[a:b] for a, b in zip(chunks.boundaries[:-1], chunks.boundaries[1:], strict=True))
            == text[chunks.boundaries[0] :]
        )
        assert chunks.covered_bytes == len(text[chunks.boundaries[0] :].encode("utf-8"))
        # Every student row whose token ends after c_0 is in a chunk, the others are context.
        next_ends = student.ends[1:]
        np.testing.assert_array_equal(chunks.row_chunk >= 0, next_ends > chunks.boundaries[0])
        # Each chunk has at least one student token and row_chunk is non-decreasing.
        assert set(chunks.row_chunk[chunks.row_chunk >= 0].tolist()) == set(range(chunks.count))
        assert (np.diff(chunks.row_chunk) >= 0).all()


def test_truncated_student_stops_the_chunks_before_its_last_end() -> None:
    # The student was cut after 3 tokens (ends 1, 2, 3 of a longer text): 3 may be a split
    # character's first piece, so it is no boundary; the chunks end at 2.
    chunks = chunk_sample("abcdef", np.array([1, 2, 3]), True, [teacher(np.arange(1, 7))], None)
    assert chunks.boundaries.tolist() == [1, 2]
    assert chunks.row_chunk.tolist() == [0, -1]
