"""collate_samples: the tensors of the bpb strategies and of the `likelihood` gate objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.align.sample import AlignedTargets
from stages.distill.batch import AlignedSample, collate_samples


def targets(n: int) -> AlignedTargets:
    return AlignedTargets(
        support_ids=np.zeros((n - 1, 2), np.int64),
        support_probs=np.full((n - 1, 2), 0.5, np.float32),
        rest_mass=np.zeros(n - 1, np.float32),
        available=np.ones(n - 1, bool),
        n_aligned=n - 1,
        mapped_mass=float(n - 1),
        n_candidates=2 * (n - 1),
        n_unmapped=0,
    )


def sample(name: str, teachers, **kwargs) -> AlignedSample:
    n = 5
    present = [targets(n) if t else None for t in teachers]
    features = np.ones((len(teachers), 1), np.float32)
    return AlignedSample(name, np.arange(n, dtype=np.int32), tuple(present), features, **kwargs)


def test_spans_are_padded_to_the_most_spans_with_a_mask() -> None:
    first = sample(
        "a", [True, True], span_loglik=np.array([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], np.float32)
    )
    second = sample("b", [True, False], span_loglik=np.array([[-7.0], [0.0]], np.float32))
    batch = collate_samples([first, second], 2)
    assert batch.span_loglik.shape == (2, 2, 3) and batch.span_loglik.dtype == torch.float32
    assert batch.span_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.span_loglik[1].tolist() == [[-7.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_without_spans_the_span_tensors_are_empty() -> None:
    batch = collate_samples([sample("a", [True, True]), sample("b", [True, False])], 2)
    assert batch.span_loglik.shape == (2, 2, 0) and batch.span_mask.shape == (2, 0)
    assert batch.to("cpu").span_mask.shape == (2, 0)


def test_bits_per_byte_is_inf_where_absent_or_not_finite() -> None:
    bpb = np.array([0.7, 0.9, np.nan], np.float32)
    batch = collate_samples(
        [sample("a", [True, False, True], bits_per_byte=bpb), sample("b", [True, True, True])], 3
    )
    inf = float("inf")
    assert batch.bits_per_byte.dtype == torch.float32
    # b: no bits per byte given (an older caller): unknown, +inf for every teacher.
    torch.testing.assert_close(batch.bits_per_byte, torch.tensor([[0.7, inf, inf], [inf, inf, inf]]))


def test_span_rows_must_match_the_teachers() -> None:
    bad = sample("a", [True, True], span_loglik=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="span log-likelihoods for 3 teachers, expected 2"):
        collate_samples([bad], 2)
