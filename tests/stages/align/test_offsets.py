"""Offset alignment: exact aligned pairs on real demo tokenizers, identity, synthetic edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from stages.align.offsets import align_rows_by_offsets, boundary_rows
from stages.tokenization import tokenize_with_ends
from tests.stages.conftest import GEMMA, QWEN, SMOLLM2, corpus_like_texts


def aligned_pairs(tokenizers, teacher_name: str, text: str) -> list[tuple[str, str]]:
    """(student token, teacher token) of every aligned row: both rows predict the same text."""
    student, teacher = tokenizers[SMOLLM2], tokenizers[teacher_name]
    s = tokenize_with_ends(student, text, add_special_tokens=True, max_tokens=None)
    t = tokenize_with_ends(teacher, text, add_special_tokens=True, max_tokens=None)
    alignment = align_rows_by_offsets(t.ends, s.ends)
    s_tokens = student.convert_ids_to_tokens(s.ids.tolist())
    t_tokens = teacher.convert_ids_to_tokens(t.ids.tolist())
    for i, j in zip(alignment.teacher_rows, alignment.student_rows, strict=True):
        assert t.ends[i] == s.ends[j]
    return [(s_tokens[j], t_tokens[i]) for i, j in zip(alignment.teacher_rows, alignment.student_rows)]


def test_boundary_rows_are_the_last_token_of_each_end():
    # BOS at 0, "ab" at 2, two pieces of one emoji ending at 3, " c" at 5.
    assert boundary_rows(np.array([0, 2, 3, 3, 5])).tolist() == [True, True, False, True]


def test_synthetic_alignment():
    teacher = np.array([0, 2, 3, 3, 5, 9])  # BOS, "ab", split char, " c", "defg"
    student = np.array([1, 2, 3, 5, 7, 9])
    alignment = align_rows_by_offsets(teacher, student)
    # Student rows ending at 2, 3, 5 (row 4 ends at 7: the teacher has no token there).
    assert alignment.student_rows.tolist() == [1, 2, 3]
    assert alignment.teacher_rows.tolist() == [1, 3, 4]
    assert alignment.n_student_rows == 5 and alignment.aligned_rate == pytest.approx(0.6)
    # A truncated teacher serves nothing beyond its last row.
    short = align_rows_by_offsets(teacher[:3], student)
    assert short.student_rows.tolist() == [1] and short.teacher_rows.tolist() == [1]
    assert align_rows_by_offsets(teacher[:1], student).student_rows.size == 0
    assert align_rows_by_offsets(teacher, student[:1]).n_student_rows == 0


@pytest.mark.parametrize("name", [SMOLLM2, GEMMA, QWEN])
def test_same_tokenizer_aligns_every_boundary_row_to_itself(demo_tokenizers, name):
    tokenizer = demo_tokenizers[name]
    for text in corpus_like_texts():
        ends = tokenize_with_ends(tokenizer, text, add_special_tokens=True, max_tokens=None).ends
        alignment = align_rows_by_offsets(ends, ends)
        assert alignment.student_rows.tolist() == alignment.teacher_rows.tolist()
        assert alignment.student_rows.tolist() == np.flatnonzero(boundary_rows(ends)).tolist()
        if text.isascii():
            assert len(alignment.student_rows) == len(ends) - 1


def test_words_with_leading_spaces(demo_tokenizers):
    text = "Hello world, the  quick fox."
    assert aligned_pairs(demo_tokenizers, GEMMA, text) == [
        ("Hello", "Hello"), ("Ġworld", "▁world"), (",", ","), ("Ġthe", "▁the"), ("Ġquick", "quick"),
        ("Ġfox", "▁fox"),
    ]  # fmt: skip
    # Gemma's BOS row predicts from char 0: SmolLM2 adds no BOS, so nothing meets it; the two
    # spaces are "Ġ" + "Ġquick" in SmolLM2 and "▁▁" + "quick" in Gemma: no common end at 17.
    assert aligned_pairs(demo_tokenizers, QWEN, text) == [
        ("Hello", "Hello"), ("Ġworld", "Ġworld"), (",", ","), ("Ġthe", "Ġthe"), ("Ġ", "Ġ"), ("Ġquick", "Ġquick"),
        ("Ġfox", "Ġfox"),
    ]  # fmt: skip


def test_code_with_indentation_and_newlines(demo_tokenizers):
    text = "def f(x):\n    return x + 1\n\n\nclass A:\n\tpass\n"
    assert aligned_pairs(demo_tokenizers, GEMMA, text) == [
        ("def", "def"), ("Ġf", "▁f"), ("(", "("), ("x", "x"), ("):", "):"), ("Ġreturn", "return"),
        ("Ġx", "▁x"), ("Ġ+", "▁+"), ("Ġ", "▁"), ("1", "1"), ("Ċ", "\n\n\n"), ("class", "class"),
        ("ĠA", "▁A"), (":", ":"), ("Ċ", "\n"), ("ĉ", "\t"), ("pass", "pass"),
    ]  # fmt: skip
    assert aligned_pairs(demo_tokenizers, QWEN, text) == [
        ("def", "def"), ("Ġf", "Ġf"), ("x", "(x"), ("ĊĠĠĠ", "ĠĠĠ"), ("Ġreturn", "Ġreturn"), ("Ġx", "Ġx"),
        ("Ġ+", "Ġ+"), ("Ġ", "Ġ"), ("1", "1"), ("Ċ", "ĊĊĊ"), ("class", "class"), ("ĠA", "ĠA"), ("Ċ", ":Ċ"),
        ("pass", "ĉpass"),
    ]  # fmt: skip


def test_digit_runs(demo_tokenizers):
    text = "Pi is 3.14159 and 1000000 ms."
    expected_digits = [("3", "3"), (".", "."), ("1", "1"), ("4", "4"), ("1", "1"), ("5", "5"), ("9", "9")]
    for name, space in ((GEMMA, "▁"), (QWEN, "Ġ")):
        pairs = aligned_pairs(demo_tokenizers, name, text)
        assert pairs[:3] == [("Pi", "Pi"), ("Ġis", space + "is"), ("Ġ", space)]
        assert pairs[3:10] == expected_digits
        assert pairs[10:] == [("Ġand", space + "and"), ("Ġ", space), ("1", "1")] + [("0", "0")] * 6 + [
            ("Ġms", space + "ms")
        ]


def test_newlines_and_carriage_returns(demo_tokenizers):
    text = "a\r\nb\n\n\nc   d"
    assert aligned_pairs(demo_tokenizers, GEMMA, text) == [
        ("a", "a"), ("č", "<0x0D>"), ("Ċ", "\n"), ("b", "b"), ("Ċ", "\n\n\n"), ("c", "c"),
    ]  # fmt: skip
    assert aligned_pairs(demo_tokenizers, QWEN, text) == [
        ("a", "a"), ("Ċ", "čĊ"), ("b", "b"), ("Ċ", "ĊĊĊ"), ("c", "c"), ("ĠĠ", "ĠĠ"),
    ]  # fmt: skip


def test_emoji_rows_meet_only_after_the_whole_character(demo_tokenizers):
    text = "Nice 😀 job 🦜! ok"
    # SmolLM2 "ĠðŁĺ" stops inside 😀: its row is not aligned, the completing "Ģ" is.
    assert aligned_pairs(demo_tokenizers, GEMMA, text) == [
        ("ice", "Nice"), ("Ģ", "▁😀"), ("Ġjob", "▁job"), ("ľ", "🦜"), ("!", "!"),
    ]  # fmt: skip
    assert aligned_pairs(demo_tokenizers, QWEN, text) == [
        ("ice", "Nice"), ("Ģ", "ĠðŁĺĢ"), ("Ġjob", "Ġjob"), ("ľ", "ľ"), ("!", "!"),
    ]  # fmt: skip


def test_accented_text(demo_tokenizers):
    text = "Ça va? Très bien, naïve café — déjà vu."
    assert aligned_pairs(demo_tokenizers, GEMMA, text) == [
        ("a", "Ça"), ("Ġva", "▁va"), ("?", "?"), ("Ã¨s", "▁Très"), ("en", "▁bien"), (",", ","),
        ("Ã¯ve", "▁naïve"), ("ĠcafÃ©", "▁café"), ("ĠâĢĶ", "▁—"), ("Ãł", "▁déjà"), ("u", "▁vu"),
    ]  # fmt: skip
    # SmolLM2 splits "Ç" in two bytes; Qwen emits it whole: they meet after its second byte.
    assert aligned_pairs(demo_tokenizers, QWEN, text)[:2] == [("ĩ", "Ãĩ"), ("a", "a")]


def test_same_next_token_keeps_only_rows_whose_next_strings_agree(demo_tokenizers, demo_token_tables):
    from stages.align.offsets import same_next_token

    text = "x = 1\n    def f():"
    student = tokenize_with_ends(demo_tokenizers[SMOLLM2], text, add_special_tokens=True, max_tokens=None)
    qwen = tokenize_with_ends(demo_tokenizers[QWEN], text, add_special_tokens=True, max_tokens=None)
    texts = {name: np.array(demo_token_tables[name].texts, dtype=object) for name in (SMOLLM2, QWEN)}
    aligned = align_rows_by_offsets(qwen.ends, student.ends)
    exact = same_next_token(aligned, qwen.ids, student.ids, texts[QWEN], texts[SMOLLM2])
    next_text = [texts[SMOLLM2][student.ids[j + 1]] for j in exact.student_rows]
    # After "1" both start at the newline but write it differently (`\n` against `\n   `): aligned,
    # yet no exact-token row; after the indentation both write " def", " f" and so on.
    after_one = int(np.flatnonzero(student.ends == text.index("1") + 1)[0])
    assert after_one in aligned.student_rows and after_one not in exact.student_rows
    assert " def" in next_text and "\n   " not in next_text
    for j, i in zip(exact.student_rows, exact.teacher_rows, strict=True):
        assert texts[QWEN][qwen.ids[i + 1]] == texts[SMOLLM2][student.ids[j + 1]]
        assert qwen.ends[i + 1] == student.ends[j + 1]
