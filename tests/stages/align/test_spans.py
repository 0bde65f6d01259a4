"""Common-boundary spans: hand-checked values, and on real demo tokenizers the spans are exactly
the offsets every teacher ends a token at, each token lands in one span, and a teacher's span
log-likelihoods add up to its log-likelihood of the covered tokens."""

from __future__ import annotations

import numpy as np
import pytest

from stages.align.spans import common_boundaries, span_logliks
from stages.tokenization import tokenize_many_with_ends
from tests.stages.conftest import GEMMA, QWEN, SMOLLM2, corpus_like_texts


def test_hand_example() -> None:
    # Text "Hello world!" (12 chars). Teacher A: <bos> | Hello | ␣world | ! ; teacher B: Hel | lo | ␣wor | ld!
    ends_a = np.array([0, 5, 11, 12])
    ends_b = np.array([3, 5, 9, 12])
    boundaries = common_boundaries([ends_a, ends_b])
    # 0 and 3 are not shared; 5 and 12 are: one span, " world!", after the context "Hello".
    assert boundaries.tolist() == [5, 12]
    lp_a = np.log(np.array([0.5, 0.25, 0.5]))  # rows: Hello, ␣world, !
    lp_b = np.log(np.array([0.9, 0.1, 0.2]))  # rows: lo, ␣wor, ld!
    np.testing.assert_allclose(span_logliks(ends_a, lp_a, boundaries), [np.log(0.25 * 0.5)])
    np.testing.assert_allclose(span_logliks(ends_b, lp_b, boundaries), [np.log(0.1 * 0.2)])
    # The same teachers with one more shared cut at 11 (B: … | ␣wor | ld | !): two spans.
    ends_b = np.array([3, 5, 9, 11, 12])
    lp_b = np.log(np.array([0.9, 0.1, 0.2, 0.8]))
    assert common_boundaries([ends_a, ends_b]).tolist() == [5, 11, 12]
    np.testing.assert_allclose(span_logliks(ends_b, lp_b, [5, 11, 12]), np.log([0.1 * 0.2, 0.8]))


def test_split_character_pieces_belong_to_the_span_their_character_ends() -> None:
    # "a😀" with the emoji as two byte pieces sharing its end 2: both pieces are in span (1, 2].
    ends = np.array([1, 2, 2])
    logprobs = np.log(np.array([0.5, 0.25]))
    assert common_boundaries([ends, np.array([1, 2])]).tolist() == [1, 2]
    np.testing.assert_allclose(span_logliks(ends, logprobs, [1, 2]), [np.log(0.5 * 0.25)])


def test_a_truncated_teacher_does_not_end_a_span_at_its_last_token() -> None:
    # Cut inside the emoji: the last kept piece reports the character's end (3), but the piece
    # that completes it was cut away; that offset is not one of this teacher's boundaries.
    ends = np.array([1, 2, 3])
    other = np.array([1, 2, 3, 5])
    assert common_boundaries([ends, other]).tolist() == [1, 2, 3]
    assert common_boundaries([ends, other], truncated=[True, False]).tolist() == [1, 2]


def test_no_shared_offset_no_span_and_shapes_checked() -> None:
    assert len(common_boundaries([])) == 0
    boundaries = common_boundaries([np.array([2, 4]), np.array([1, 3])])
    assert len(boundaries) == 0
    assert span_logliks(np.array([2, 4]), np.array([-1.0]), boundaries).shape == (0,)
    # A single teacher: every distinct end is a boundary.
    assert common_boundaries([np.array([0, 2, 2, 4])]).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="one per token after the first"):
        span_logliks(np.array([1, 2, 3]), np.zeros(3), np.array([1, 3]))
    with pytest.raises(ValueError, match="must be one of the teacher's token ends"):
        span_logliks(np.array([1, 2, 4]), np.zeros(2), np.array([1, 3]))
    with pytest.raises(ValueError, match="at or after its first"):
        span_logliks(np.array([1, 2, 4]), np.zeros(2), np.array([0, 2]))


@pytest.mark.parametrize("pair", [(GEMMA, QWEN), (QWEN, SMOLLM2), (GEMMA, SMOLLM2)])
def test_spans_on_real_tokenizers(demo_tokenizers, pair: tuple[str, str]) -> None:
    texts = corpus_like_texts(chunk_chars=600, files=2)
    tokenized = {
        name: tokenize_many_with_ends(demo_tokenizers[name], texts, add_special_tokens=True, max_tokens=None)
        for name in pair
    }
    rng = np.random.default_rng(0)
    for i, text in enumerate(texts):
        ends = [tokenized[name][i].ends.astype(np.int64) for name in pair]
        boundaries = common_boundaries(ends)
        # Exactly the offsets at which both tokenisations end a token.
        assert boundaries.tolist() == sorted(set(ends[0].tolist()) & set(ends[1].tolist()))
        assert len(boundaries) >= 2, f"text {i}: the tokenizers share fewer than two offsets"
        for name, teacher_ends in zip(pair, ends, strict=True):
            logprobs = -rng.exponential(size=len(teacher_ends) - 1)
            spans = span_logliks(teacher_ends, logprobs, boundaries)
            assert spans.shape == (len(boundaries) - 1,)
            # Σ over spans = the teacher's total over the tokens after the first boundary, up to the last.
            covered = (teacher_ends[1:] > boundaries[0]) & (teacher_ends[1:] <= boundaries[-1])
            np.testing.assert_allclose(spans.sum(), logprobs[covered].sum(), rtol=1e-9, atol=1e-9)
            # Span by span, the tokens ending inside it (brute force).
            for s in range(len(spans)):
                inside = (teacher_ends[1:] > boundaries[s]) & (teacher_ends[1:] <= boundaries[s + 1])
                assert inside.any(), f"{name}: span {s} of text {i} holds no token"
                assert spans[s] == pytest.approx(logprobs[inside].sum(), abs=1e-9)
            # The tokens up to each boundary spell exactly the text up to it: the span's tokens are
            # the span's text, so ll is log p(text of s | text before s).
            tokenizer = demo_tokenizers[name]
            ids = tokenized[name][i].ids
            for c in boundaries[:: max(len(boundaries) // 8, 1)]:
                count = int(np.searchsorted(teacher_ends, c, side="right"))
                decoded = tokenizer.decode(ids[:count].tolist(), skip_special_tokens=True)
                assert _nfc(decoded) == _nfc(text[:c]), f"{name}: text {i} at offset {c}"


def _nfc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", text)
