"""align_sample: renormalised, merged, never-invented targets; and the per-teacher statistics."""

from __future__ import annotations

import numpy as np
import pytest

from stages.align.dtw import align_rows_by_dtw
from stages.align.offsets import align_rows_by_offsets
from stages.align.sample import align_sample, relative_mass, renormalise, residual_target
from stages.align.stats import alignment_stats_for_teacher, summarize_alignment
from stages.tokenization import tokenize_many_with_ends
from tests.stages.conftest import GEMMA, QWEN, SMOLLM2, corpus_like_texts


def test_hand_computed_targets():
    # Teacher: 4 tokens ending at 0 (BOS), 2, 5, 6 → rows 0..2; student: 3 tokens ending 2, 5, 6.
    teacher_ends, student_ends = np.array([0, 2, 5, 6]), np.array([2, 5, 6])
    topk_ids = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    topk_logprobs = np.log(np.array([[0.5, 0.3, 0.1], [0.4, 0.4, 0.1], [0.6, 0.2, 0.1]]))
    # teacher id → student id: 3 and 4 merge into 10, 5 is unmapped; 6, 7, 8 unmapped entirely.
    vocab_map = np.array([20, 21, 22, 10, 10, -1, -1, -1, -1], dtype=np.int32)
    targets = align_sample(
        student_ends, teacher_ends, topk_ids, topk_logprobs, vocab_map, target="renormalised"
    )
    # Student row 0 (end 2) ← teacher row 1; student row 1 (end 5) ← teacher row 2 (all unmapped).
    assert targets.available.tolist() == [True, False]
    assert targets.support_ids.tolist() == [[10, 0, 0], [0, 0, 0]]
    assert targets.support_probs.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert targets.n_aligned == 2 and targets.n_candidates == 6 and targets.n_unmapped == 4
    assert targets.mapped_mass == pytest.approx(0.8 / 0.9 + 0.0)
    assert targets.support_ids.dtype == np.int64 and targets.support_probs.dtype == np.float32


def test_renormalises_over_mapped_candidates_sorted_by_probability():
    teacher_ends = student_ends = np.array([1, 2])
    topk_logprobs = np.log(np.array([[0.4, 0.3, 0.2, 0.05]]))
    vocab_map = np.array([7, -1, 3, 7], dtype=np.int32)  # ids 0 and 3 merge; id 1 unmapped
    targets = align_sample(
        student_ends, teacher_ends, np.array([[0, 1, 2, 3]]), topk_logprobs, vocab_map, target="renormalised"
    )
    assert targets.support_ids.tolist() == [[7, 3, 0, 0]]
    np.testing.assert_allclose(targets.support_probs[0], [0.45 / 0.65, 0.2 / 0.65, 0, 0], rtol=1e-6)
    assert targets.mapped_mass == pytest.approx(0.65 / 0.95)


def test_ids_outside_the_map_and_minus_infinity_carry_nothing():
    teacher_ends = student_ends = np.array([1, 2])
    targets = align_sample(
        student_ends,
        teacher_ends,
        np.array([[0, 99, 1]]),
        np.array([[-0.1, -0.2, -np.inf]]),
        np.array([5, 6], dtype=np.int32),
        target="renormalised",
    )
    assert targets.support_ids.tolist() == [[5, 0, 0]] and targets.support_probs.tolist() == [[1.0, 0.0, 0.0]]
    assert targets.n_unmapped == 1


def test_residual_keeps_the_stored_probabilities_and_the_rest():
    # The same row as above: merged 0.45 and 0.2 stay as the teacher said; the rest bucket holds
    # 1 − 0.65 = 0.35 (the unmapped candidate's 0.3 and the 0.05 beyond the top-k).
    teacher_ends = student_ends = np.array([1, 2])
    topk_logprobs = np.log(np.array([[0.4, 0.3, 0.2, 0.05]]))
    vocab_map = np.array([7, -1, 3, 7], dtype=np.int32)
    targets = align_sample(
        student_ends, teacher_ends, np.array([[0, 1, 2, 3]]), topk_logprobs, vocab_map, target="residual"
    )
    assert targets.support_ids.tolist() == [[7, 3, 0, 0]]
    np.testing.assert_allclose(targets.support_probs[0], [0.45, 0.2, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(targets.rest_mass, [0.35], rtol=1e-6)
    renormalised = align_sample(
        student_ends, teacher_ends, np.array([[0, 1, 2, 3]]), topk_logprobs, vocab_map, target="renormalised"
    )
    assert renormalised.rest_mass.tolist() == [0.0]


def test_residual_over_drawn_tokens_is_their_empirical_distribution():
    # A sampled cache row: 12 draws, ids 4 (×7), 9 (×4), 2 (×1, unmapped); log(count / 12).
    from data_schemas.teacher_shard import empirical_logprobs

    counts = np.array([[7, 4, 1, 0]], dtype=np.uint8)
    targets = align_sample(
        np.array([1, 2]),
        np.array([1, 2]),
        np.array([[4, 9, 2, 0]]),
        empirical_logprobs(np.concatenate([counts, np.zeros((1, 8), np.uint8)], axis=1))[:, :4],
        np.array([0, 0, -1, 0, 40, 0, 0, 0, 0, 90], dtype=np.int32),
        target="residual",
    )
    assert targets.support_ids.tolist() == [[40, 90, 0, 0]]
    np.testing.assert_allclose(targets.support_probs[0], [7 / 12, 4 / 12, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(targets.rest_mass, [1 / 12], rtol=1e-5)


def test_target_functions_by_hand():
    mass = relative_mass(np.log(np.array([[0.4, 0.2, 0.0], [0.0, 0.0, 0.0]])))
    np.testing.assert_allclose(mass, [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])  # −inf rows carry nothing
    np.testing.assert_allclose(renormalise(mass), [[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 0.0]])
    keep = np.array([[True, True, False], [True, True, True]])
    probs, rest = residual_target(np.log(np.array([[0.5, 0.2, 0.1], [0.6, 0.5, 0.0]])), keep)
    np.testing.assert_allclose(probs, [[0.5, 0.2, 0.0], [0.6 / 1.1, 0.5 / 1.1, 0.0]])
    np.testing.assert_allclose(rest, [0.3, 0.0], atol=1e-12)  # Σ p above 1 (grid): scaled, no rest


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"len\(teacher_ends\) - 1"):
        align_sample(
            np.array([1, 2]),
            np.array([1, 2, 3]),
            np.zeros((1, 2), int),
            np.zeros((1, 2)),
            np.arange(3),
            target="renormalised",
        )


def test_identity_teacher_gives_back_its_own_top_k(demo_tokenizers):
    smollm2 = demo_tokenizers[SMOLLM2]
    rng = np.random.default_rng(0)
    for student in tokenize_many_with_ends(
        smollm2, corpus_like_texts(files=1), add_special_tokens=True, max_tokens=None
    ):
        rows, k = len(student.ids) - 1, 8
        topk_ids, topk_logprobs = random_topk(rng, rows, k, 49152)
        targets = align_sample(
            student.ends,
            student.ends,
            topk_ids,
            topk_logprobs,
            np.arange(49152, dtype=np.int32),
            target="renormalised",
        )
        boundary = np.flatnonzero(student.ends[:-1] < student.ends[1:])
        assert np.flatnonzero(targets.available).tolist() == boundary.tolist()
        expected = np.exp(topk_logprobs[boundary])
        expected /= expected.sum(axis=1, keepdims=True)
        # Same (id, probability) pairs; equal probabilities (fp16 ties) come in student-id order.
        order = np.lexsort((topk_ids[boundary], -expected), axis=1)
        assert (
            targets.support_ids[boundary].tolist()
            == np.take_along_axis(topk_ids[boundary], order, 1).tolist()
        )
        np.testing.assert_allclose(
            targets.support_probs[boundary], np.take_along_axis(expected, order, 1), rtol=1e-5, atol=1e-7
        )


def random_topk(rng: np.random.Generator, rows: int, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random ids with log-softmax-like logprobs sorted descending (top-k mass < 1)."""
    ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(rows)]).astype(np.int32)
    logits = rng.normal(size=(rows, k)) * 3
    logprobs = np.sort(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True) + 0.5), axis=1)[:, ::-1]
    return ids, logprobs.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("teacher_name", [GEMMA, QWEN])
def test_mass_is_conserved_on_real_tokenizers(demo_tokenizers, demo_vocab_maps, teacher_name):
    texts = corpus_like_texts()
    students = tokenize_many_with_ends(
        demo_tokenizers[SMOLLM2], texts, add_special_tokens=True, max_tokens=None
    )
    teachers = tokenize_many_with_ends(
        demo_tokenizers[teacher_name], texts, add_special_tokens=True, max_tokens=None
    )
    vocab_map = demo_vocab_maps[teacher_name, "prefix"]
    rng = np.random.default_rng(1)
    samples = []
    for student, teacher in zip(students, teachers, strict=True):
        # Real teacher next tokens plus random competitors, some of them special (unmapped) ids.
        topk_ids, topk_logprobs = random_topk(rng, len(teacher.ids) - 1, 10, len(vocab_map))
        topk_ids[:, 0] = teacher.ids[1:]
        topk_ids[::7, 1] = 6  # Gemma <unused0> / Qwen id 6: specials or ordinary, either way fine
        targets = align_sample(
            student.ends, teacher.ends, topk_ids, topk_logprobs, vocab_map, target="renormalised"
        )
        samples.append(targets)
        sums = targets.support_probs.astype(np.float64).sum(axis=1)
        np.testing.assert_allclose(sums[targets.available], 1.0, atol=1e-6)
        assert (sums[~targets.available] == 0).all()
        assert (targets.support_ids >= 0).all() and (
            targets.support_ids < len(demo_tokenizers[SMOLLM2])
        ).all()
        # No probability on anything that came from an unmapped id: every positive entry's id is
        # the image of one of the row's candidates.
        rows = np.flatnonzero(targets.available)
        assert (targets.support_probs[~targets.available] == 0).all()
        for row in rows[:50]:
            positive = targets.support_ids[row][targets.support_probs[row] > 0]
            assert len(set(positive.tolist())) == len(positive)
            assert -1 not in positive
    stats = summarize_alignment(samples)
    assert stats.n_samples == len(texts) and 0.7 < stats.aligned_rate <= 1.0
    assert 0.0 < stats.mapped_mass_rate <= 1.0 and 0.0 <= stats.unmapped_id_rate < 0.2


def test_stats_for_teacher_rows_accept_flat_shard_lists(demo_tokenizers, demo_vocab_maps):
    texts = corpus_like_texts(files=1)
    gemma = tokenize_many_with_ends(demo_tokenizers[GEMMA], texts, add_special_tokens=True, max_tokens=None)
    rng = np.random.default_rng(2)
    topk = [random_topk(rng, len(t.ids) - 1, 4, 262144) for t in gemma]
    arguments = (demo_tokenizers[SMOLLM2], texts, [t.ends for t in gemma])
    vocab_map = demo_vocab_maps[GEMMA, "prefix"]
    as_rows = alignment_stats_for_teacher(*arguments, [i for i, _ in topk], [lp for _, lp in topk], vocab_map)
    flat = alignment_stats_for_teacher(
        *arguments, [i.ravel() for i, _ in topk], [lp.ravel() for _, lp in topk], vocab_map
    )
    assert as_rows == flat
    summary = as_rows.as_dict()
    assert summary["n_samples"] == len(texts)
    assert summary["aligned_rate"] == pytest.approx(as_rows.n_aligned_rows / as_rows.n_student_rows)
    assert set(summary) >= {"aligned_rate", "mapped_mass_rate", "unmapped_id_rate", "available_rate"}


@pytest.mark.parametrize("teacher_name", [SMOLLM2, GEMMA, QWEN])
def test_dtw_alignment_gives_the_same_targets_where_it_takes_the_offsets_row(
    demo_tokenizers, demo_token_tables, demo_vocab_maps, teacher_name
):
    """`distill.aligner=dtw` through `align_sample` on real demo tokenizers: the same targets
    contract, and at every student row where DTW takes the teacher row offsets take, the very
    same target. With the student's own tokenizer DTW aligns every row offsets do and more (the
    rows of tokens that end no character of their own: a byte of a longer character); where the
    tokenizers differ its hard pairs (one partner, equal text) align fewer rows
    (bench/results/align.md: 85 % vs 93 % for Gemma), and the few rows only DTW aligns are
    zero-cost shifts inside runs of one token."""
    texts = corpus_like_texts(files=2)
    student_texts = demo_token_tables[SMOLLM2].texts
    teacher_texts = demo_token_tables[teacher_name].texts
    students = tokenize_many_with_ends(
        demo_tokenizers[SMOLLM2], texts, add_special_tokens=True, max_tokens=None
    )
    teachers = tokenize_many_with_ends(
        demo_tokenizers[teacher_name], texts, add_special_tokens=True, max_tokens=None
    )
    vocab_map = demo_vocab_maps[teacher_name, "prefix"]
    rng = np.random.default_rng(3)
    by_offsets = by_dtw = same_row = only_dtw = 0
    for student, teacher in zip(students, teachers, strict=True):
        topk_ids, topk_logprobs = random_topk(rng, len(teacher.ids) - 1, 10, len(vocab_map))
        topk_ids[:, 0] = teacher.ids[1:]
        alignment = align_rows_by_dtw(
            [teacher_texts[i] for i in teacher.ids], [student_texts[i] for i in student.ids]
        )
        args = (student.ends, teacher.ends, topk_ids, topk_logprobs, vocab_map)
        offsets = align_sample(*args, target="renormalised")
        dtw = align_sample(*args, target="renormalised", alignment=alignment)
        sums = dtw.support_probs.astype(np.float64).sum(axis=1) + dtw.rest_mass
        np.testing.assert_allclose(sums[dtw.available], 1.0, atol=1e-6)
        assert (sums[~dtw.available] == 0).all() and dtw.n_rows == offsets.n_rows == len(student.ids) - 1
        reference = align_rows_by_offsets(teacher.ends, student.ends)
        offset_row = dict(zip(reference.student_rows.tolist(), reference.teacher_rows.tolist(), strict=True))
        pairs = zip(alignment.student_rows.tolist(), alignment.teacher_rows.tolist(), strict=True)
        taken = [j for j, i in pairs if offset_row.get(j) == i]
        np.testing.assert_array_equal(dtw.support_ids[taken], offsets.support_ids[taken])
        np.testing.assert_array_equal(dtw.support_probs[taken], offsets.support_probs[taken])
        by_offsets += offsets.n_aligned
        by_dtw += dtw.n_aligned
        same_row += len(taken)
        only_dtw += sum(j not in offset_row for j in alignment.student_rows.tolist())
    assert same_row > 1000
    if teacher_name == SMOLLM2:
        assert same_row == by_offsets and by_dtw == by_offsets + only_dtw and only_dtw > 0
    else:
        assert 0.7 * by_offsets < by_dtw < by_offsets and only_dtw <= 0.005 * by_dtw
