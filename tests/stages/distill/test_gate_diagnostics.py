"""Gate diagnostics: the EM oracle mixture, the oracle teacher, the mixture bits per byte, and the
same figures in a training log window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.distill.gate_diagnostics import (
    contested,
    em_mixture_weights,
    gate_diagnostics,
    mixture_bits,
    oracle_teacher,
)

LN2 = math.log(2)


def _spans(probabilities: list[list[float]]) -> torch.Tensor:
    """`[1, K, S]` span log-likelihoods from per-teacher span probabilities."""
    return torch.tensor(probabilities, dtype=torch.float64).log().unsqueeze(0)


def test_em_finds_the_maximum_of_the_span_likelihood() -> None:
    ll = _spans([[0.6, 0.05, 0.3], [0.2, 0.5, 0.1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    present = torch.ones(1, 2, dtype=torch.bool)
    (w,) = em_mixture_weights(ll, mask, present, iterations=500)
    p = ll.exp()[0].numpy()
    grid = np.linspace(1e-4, 1 - 1e-4, 20001)[:, None]
    objective = np.log(grid * p[0] + (1 - grid) * p[1]).sum(axis=1)
    assert float(w[0]) == pytest.approx(float(grid[int(np.argmax(objective)), 0]), abs=2e-4)
    assert float(w.sum()) == pytest.approx(1.0)


def test_em_gives_a_teacher_better_on_every_span_all_the_weight() -> None:
    ll = _spans([[0.5, 0.4, 0.6], [0.1, 0.1, 0.2]])
    (w,) = em_mixture_weights(ll, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool), 300)
    assert float(w[0]) > 0.99


def test_em_keeps_identical_teachers_uniform_and_absent_ones_at_zero() -> None:
    ll = torch.cat([_spans([[0.3, 0.7], [0.3, 0.7], [0.9, 0.9]])])
    present = torch.tensor([[True, True, False]])
    (w,) = em_mixture_weights(ll, torch.ones(1, 2, dtype=torch.bool), present)
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.0])
    # No span: the uniform start; no teacher: zeros.
    none_present = torch.zeros(1, 3, dtype=torch.bool)
    assert em_mixture_weights(ll, torch.zeros(1, 2, dtype=torch.bool), present)[0].tolist() == [0.5, 0.5, 0]
    assert em_mixture_weights(ll, torch.ones(1, 2, dtype=torch.bool), none_present)[0].tolist() == [0, 0, 0]


def test_oracle_teacher_is_the_lowest_bits_per_byte_among_present_teachers() -> None:
    bpb = torch.tensor([[0.9, 0.5, 0.2], [0.9, 0.5, 0.2]])
    present = torch.tensor([[True, True, True], [True, True, False]])
    assert oracle_teacher(bpb, present).tolist() == [2, 1]


def test_mixture_bits_by_hand_and_padding_ignored() -> None:
    ll = _spans([[0.5, 0.25, 0.9], [0.25, 0.5, 0.1]])
    mask = torch.tensor([[True, True, False]])
    w = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    expected = -(math.log(0.375) + math.log(0.375)) / LN2
    assert float(mixture_bits(w, ll, mask)[0]) == pytest.approx(expected)
    one_hot = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert float(mixture_bits(one_hot, ll, mask)[0]) == pytest.approx(-(math.log(0.5) + math.log(0.25)) / LN2)


def test_gate_diagnostics_of_two_domain_specialists() -> None:
    # Two samples: teacher 0 knows the first one's text, teacher 1 the second's.
    ll = torch.cat([_spans([[0.8, 0.9], [0.1, 0.2]]), _spans([[0.1, 0.1], [0.7, 0.8]])])
    mask = torch.ones(2, 2, dtype=torch.bool)
    present = torch.ones(2, 2, dtype=torch.bool)
    bpb = torch.tensor([[0.3, 1.5], [1.6, 0.4]])
    span_bytes = torch.tensor([10, 10])
    routed = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    out = gate_diagnostics(routed, ll, mask, span_bytes, bpb, present, ["a", "b"])
    assert out["samples"] == 2 and out["agreement"] == 1.0
    assert out["oracle_share/a"] == out["oracle_share/b"] == 0.5
    assert out["mean_w/a"] == pytest.approx(0.55)
    # The per-sample best beats either fixed teacher; the EM mixture is at least as good as both.
    assert out["bpb/oracle_mixture"] <= out["bpb/oracle_teacher"] + 1e-12
    assert out["bpb/oracle_teacher"] < out["bpb/best_single"]
    nats = -(math.log(0.9 * 0.8 + 0.1 * 0.1) + math.log(0.9 * 0.9 + 0.1 * 0.2))
    nats -= math.log(0.2 * 0.1 + 0.8 * 0.7) + math.log(0.2 * 0.1 + 0.8 * 0.8)
    assert out["bpb/gate"] == pytest.approx(nats / LN2 / 20)
    flipped = gate_diagnostics(routed.flip(-1), ll, mask, span_bytes, bpb, present, ["a", "b"])
    assert flipped["agreement"] == 0.0 and flipped["bpb/gate"] > out["bpb/gate"]


def test_samples_with_one_teacher_are_not_contested() -> None:
    present = torch.tensor([[True, False], [True, True], [True, True]])
    mask = torch.tensor([[True], [True], [False]])
    assert contested(present, mask).tolist() == [False, True, False]
    out = gate_diagnostics(
        torch.tensor([[1.0, 0.0]] * 3),
        torch.zeros(3, 2, 1),
        mask,
        torch.tensor([5, 5, 5]),
        torch.ones(3, 2),
        present & torch.tensor([[True, False]]),
        ["a", "b"],
    )
    assert out["samples"] == 0 and math.isnan(out["agreement"]) and math.isnan(out["bpb/gate"])
