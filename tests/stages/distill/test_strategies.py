"""Tests of the strategy table: parsing, hand-checked weights, and which weights train the gate."""

from __future__ import annotations

import math

import pytest
import torch

from stages.distill.fusion import fuse_position_weights, fusion_cross_entropy
from stages.distill.gating import SelectionGate, select_teachers
from stages.distill.losses import feedback_loss, importance
from stages.distill.settings import DistillSettings
from stages.distill.strategies import STRATEGY_NAMES, parse_strategy, sample_weights

TEACHERS = ("llama", "qwen", "phi")
# Sample 0: all present, phi best. Sample 1: phi absent (its high score must be ignored).
SCORES = torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.6, 0.99]])
PRESENT = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
# Bits per byte, lower is better: sample 0 ranks qwen best (not phi, the best by score); sample 1's
# absent phi has the lowest value of all, which must be ignored.
BITS_PER_BYTE = torch.tensor([[1.2, 0.8, 1.0], [0.9, 1.1, 0.1]])


def test_parse_known_strategies() -> None:
    for name in STRATEGY_NAMES:
        if name != "single:NAME":
            assert parse_strategy(name, TEACHERS).name == name
    single = parse_strategy("single:qwen", TEACHERS)
    assert (single.kind, single.teacher, single.teacher_index, single.name) == (
        "single",
        "qwen",
        1,
        "single:qwen",
    )


def test_unknown_strategy_names_the_value_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'best'.*adaptive, min_ce, avg_ce"):
        parse_strategy("best", TEACHERS)


def test_single_with_unknown_teacher_lists_the_teachers() -> None:
    with pytest.raises(ValueError, match=r"'gpt'.*'llama', 'qwen', 'phi'"):
        parse_strategy("single:gpt", TEACHERS)


def test_strategy_flags() -> None:
    adaptive, none = parse_strategy("adaptive"), parse_strategy("none")
    assert adaptive.needs_gate and adaptive.uses_fusion
    assert not none.needs_gate and not none.uses_fusion
    assert not parse_strategy("random_gate").needs_gate


def test_authors_is_the_former_name_of_random_gate() -> None:
    assert parse_strategy("authors") == parse_strategy("random_gate")
    assert parse_strategy("authors").name == "random_gate"
    assert DistillSettings(strategy="authors").strategy == "random_gate"


def weights_of(spec: str, **kwargs) -> torch.Tensor:
    kwargs.setdefault("bits_per_byte", BITS_PER_BYTE)
    kwargs.setdefault("tau", 0.15)
    return sample_weights(parse_strategy(spec, TEACHERS), SCORES, PRESENT, **kwargs)


def test_min_ce_picks_the_best_present_teacher() -> None:
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(weights_of("min_ce"), expected)


def test_avg_ce_is_softmax_of_scores_over_present() -> None:
    row0 = torch.softmax(SCORES[0], dim=-1)
    row1 = torch.cat([torch.softmax(SCORES[1, :2], dim=-1), torch.zeros(1)])
    torch.testing.assert_close(weights_of("avg_ce"), torch.stack([row0, row1]))


def test_min_bpb_picks_the_lowest_bits_per_byte_among_present() -> None:
    expected = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(weights_of("min_bpb"), expected)


def test_bpb_rules_never_pick_an_absent_teacher_whatever_its_value() -> None:
    # Absent teachers with the best (or a NaN, or an infinite) value; a present teacher with NaN
    # or infinite bits per byte is ranked last among the present, never dropped for an absent one.
    bpb = torch.tensor([[float("nan"), 0.1, 0.5], [float("inf"), float("inf"), 0.0]])
    present = torch.tensor([[1, 0, 1], [1, 0, 0]], dtype=torch.bool)
    for spec in ("min_bpb", "avg_bpb"):
        weights = sample_weights(parse_strategy(spec), SCORES, present, bits_per_byte=bpb, tau=0.15)
        assert torch.isfinite(weights).all() and (weights[~present] == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    weights = sample_weights(parse_strategy("min_bpb"), SCORES, present, bits_per_byte=bpb, tau=0.15)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))


def test_avg_bpb_is_softmax_of_two_to_the_minus_bpb_over_present() -> None:
    # By hand: sample 0 over all three, sample 1 over llama and qwen only.
    e0 = [math.exp(2**-1.2), math.exp(2**-0.8), math.exp(2**-1.0)]
    e1 = [math.exp(2**-0.9), math.exp(2**-1.1)]
    expected = torch.tensor([[v / sum(e0) for v in e0], [e1[0] / sum(e1), e1[1] / sum(e1), 0.0]])
    torch.testing.assert_close(weights_of("avg_bpb"), expected)


def test_bpb_rules_need_bits_per_byte() -> None:
    with pytest.raises(ValueError, match="'min_bpb' needs each teacher's bits_per_byte"):
        weights_of("min_bpb", bits_per_byte=None)


def test_uniform_and_single() -> None:
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(weights_of("uniform"), expected)
    # phi is absent from sample 1: that sample gets no fusion target at all.
    torch.testing.assert_close(weights_of("single:phi"), torch.tensor([[0.0, 0.0, 1.0], [0.0] * 3]))


def test_none_gives_zero_weights() -> None:
    assert (weights_of("none") == 0).all()


@pytest.mark.parametrize(
    "spec", ["adaptive", "random_gate", "min_ce", "avg_ce", "min_bpb", "avg_bpb", "uniform"]
)
def test_weights_sum_to_one_and_absent_get_zero(spec: str) -> None:
    weights = weights_of(spec, gate=SelectionGate(3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert weights[1, 2] == 0 and (weights >= 0).all()


def test_adaptive_without_gate_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs the run's SelectionGate"):
        weights_of("adaptive")


def test_random_gate_is_a_fresh_untrained_gate_with_threshold() -> None:
    first = weights_of("random_gate", generator=torch.Generator().manual_seed(1))
    again = weights_of("random_gate", generator=torch.Generator().manual_seed(1))
    other = weights_of("random_gate", generator=torch.Generator().manual_seed(2))
    assert not first.requires_grad and first.grad_fn is None
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    # Exactly a default-initialised gate drawn from that generator, tau applied.
    gate = SelectionGate(3)
    gate.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = select_teachers(gate(SCORES, PRESENT), tau=0.15)
    torch.testing.assert_close(first, expected)


def test_gates_read_the_features_and_fixed_rules_the_scores() -> None:
    """`gate_features: all`: the gates see [B, K, F]; min_ce / avg_ce still rank by the scores."""
    features = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(3))
    gate = SelectionGate(3, num_features=4)
    with torch.no_grad():
        expected = select_teachers(gate(features, PRESENT), tau=0.15)
    torch.testing.assert_close(weights_of("adaptive", features=features, gate=gate), expected)
    random_gate = weights_of("random_gate", features=features, generator=torch.Generator().manual_seed(1))
    fresh = SelectionGate(3, num_features=4)
    fresh.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(random_gate, select_teachers(fresh(features, PRESENT), tau=0.15))
    for spec in ("min_ce", "avg_ce"):
        torch.testing.assert_close(weights_of(spec, features=features), weights_of(spec))


def gate_step_loss(gate: SelectionGate, fusion_trains_gate: bool, feedback_weight: float):
    """One micro-batch of the adaptive strategy on a tiny student, as the training loop wires it."""
    gen = torch.Generator().manual_seed(0)
    batch, teachers, length, vocab, top_k = 2, 3, 5, 7, 2
    logits = torch.randn(batch, length, vocab, generator=gen, requires_grad=True)
    ids = torch.randint(0, vocab, (batch, teachers, length, top_k), generator=gen)
    probs = torch.softmax(torch.randn(batch, teachers, length, top_k, generator=gen), dim=-1)
    available = torch.ones(batch, teachers, length, dtype=torch.bool)
    loss_mask = torch.ones(batch, length, dtype=torch.bool)

    weights = sample_weights(parse_strategy("adaptive"), SCORES, PRESENT, gate=gate, tau=0.15)
    fused = fusion_cross_entropy(
        logits,
        ids,
        probs,
        fuse_position_weights(weights if fusion_trains_gate else weights.detach(), available),
        loss_mask,
    )
    feedback = feedback_loss(importance(weights))
    return 0.1 * fused.loss + feedback_weight * feedback


@pytest.mark.parametrize("fusion_trains_gate", [True, False])
def test_adaptive_gate_gets_gradient_and_moves(fusion_trains_gate: bool) -> None:
    torch.manual_seed(0)
    gate = SelectionGate(3)
    before = [p.detach().clone() for p in gate.parameters()]
    optimizer = torch.optim.SGD(gate.parameters(), lr=0.1)
    gate_step_loss(gate, fusion_trains_gate, feedback_weight=0.5).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, gate.parameters(), strict=True))


@pytest.mark.parametrize("fusion_trains_gate", [True, False])
def test_fusion_trains_gate_flag_routes_the_fusion_gradient(fusion_trains_gate: bool) -> None:
    torch.manual_seed(0)
    gate = SelectionGate(3)
    gate_step_loss(gate, fusion_trains_gate, feedback_weight=0.0).backward()
    grads = [p.grad for p in gate.parameters()]
    has_grad = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert has_grad == fusion_trains_gate
