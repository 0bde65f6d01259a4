"""Per-sample scores against hand computation."""

from __future__ import annotations

import math

import numpy as np

from stages.extract.backends.base import TopkRows
from stages.extract.scores import predicted_span_bytes, sample_scores


def test_scores_match_hand_computation() -> None:
    rows = TopkRows(
        topk_ids=np.array([[3, 4], [5, 6]], np.int32),
        topk_logprobs=np.log(np.array([[0.5, 0.25], [0.6, 0.3]], np.float32)),
        target_logprobs=np.log(np.array([0.5, 0.1], np.float32)),
    )
    scores = sample_scores(rows, predicted_bytes=4)
    nats = -(math.log(0.5) + math.log(0.1))
    assert math.isclose(scores.ce, nats / 2, rel_tol=1e-6)
    assert math.isclose(scores.bits_per_byte, nats / math.log(2) / 4, rel_tol=1e-6)
    assert math.isclose(scores.topk_mass, (0.75 + 0.9) / 2, rel_tol=1e-6)
    # Both rows renormalise to (2/3, 1/3).
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert math.isclose(scores.entropy_topk, entropy, rel_tol=1e-6)


def test_a_sample_without_rows_has_nan_scores() -> None:
    scores = sample_scores(TopkRows.empty(4), predicted_bytes=0)
    assert all(
        math.isnan(v) for v in (scores.ce, scores.bits_per_byte, scores.topk_mass, scores.entropy_topk)
    )


def test_predicted_span_is_the_text_after_the_first_token() -> None:
    text = "Café au lait"
    # No BOS: token 0 = "Café" (ends at 4), the rest is predicted: " au lait" = 8 bytes.
    assert predicted_span_bytes(text, np.array([4, 7, 12])) == 8
    # BOS first (covers nothing): the whole text is predicted, é is two UTF-8 bytes.
    assert predicted_span_bytes(text, np.array([0, 4, 7, 12])) == 13
    # Truncated: only up to the last kept token.
    assert predicted_span_bytes(text, np.array([0, 4])) == 5
    assert predicted_span_bytes(text, np.array([4])) == 0
