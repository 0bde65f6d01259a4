"""The loss-term home: which terms a run computes with which weight, their weighted sum, and a new
term that plugs in through the registry alone and reaches the log."""

from __future__ import annotations

import pytest
import torch

from stages.distill.loss_terms import TERMS, LossTerm, TermValue, term_weights
from stages.distill.metrics import StepStats
from stages.distill.settings import DistillSettings
from stages.distill.strategies import parse_strategy
from tests.stages.distill.test_model import batch_of, module_for


def weights_of(strategy: str = "adaptive", **settings) -> dict[str, float]:
    return term_weights(DistillSettings(**settings), parse_strategy(strategy))


def test_term_weights_follow_the_strategy_and_the_gate_objective() -> None:
    assert weights_of("none", lam=0.3) == {"clm": 1.0}  # `none`: CLM alone, whatever λ
    assert weights_of("uniform") == {"clm": 0.9, "fusion": pytest.approx(0.1), "feedback": 0.0}
    assert weights_of() == {"clm": 0.9, "fusion": pytest.approx(0.1), "feedback": 0.5}
    assert weights_of(gate_objective="likelihood")["gate_nll"] == 1.0
    # The likelihood objective trains a gate: without one there is no such term.
    assert "gate_nll" not in weights_of("min_ce", gate_objective="likelihood")
    assert weights_of("min_ce", objective="chunk", lam=0.0) == {
        "clm": 0.0,
        "chunk": 1.0,
        "feedback": 0.0,
    }


def test_total_is_the_weighted_sum_of_the_terms_it_logs() -> None:
    batch = batch_of(spans=3)
    output = module_for("adaptive", gate_objective="likelihood")(batch)
    values = output.losses.values
    assert list(values) == ["clm", "fusion", "feedback", "gate_nll"]
    expected = 0.9 * values["clm"] + 0.1 * values["fusion"] + 0.5 * values["feedback"] + values["gate_nll"]
    torch.testing.assert_close(output.losses.total, expected)
    assert set(output.losses.stats) == {"fusion/fused_positions", "fusion/entropy_sum"}


def toy_term(x) -> TermValue:
    """Mean squared logit at the next tokens; logs how many rows it saw."""
    rows = x.batch.loss_mask.sum()
    loss = (x.target_logits.float() ** 2 * x.batch.loss_mask).sum() / rows.clamp_min(1)
    return TermValue(loss, {"rows": rows.to(torch.float64)})


def test_a_new_term_is_one_function_and_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        TERMS,
        "toy",
        LossTerm(toy_term, stats=("rows",), rates={"toy/rows_per_micro_batch": ("rows", "micro_batches")}),
    )
    batch = batch_of()
    module = module_for("uniform")
    module.terms = {**module.terms, "toy": 0.25}
    output = module(batch)
    values = output.losses.values
    expected = 0.9 * values["clm"] + 0.1 * values["fusion"] + 0.25 * values["toy"]  # uniform: β adds 0
    torch.testing.assert_close(output.losses.total, expected)
    output.losses.total.backward()  # the new term has its gradient path to the student

    stats = StepStats(("a", "b"), module.terms)
    stats.add(batch, output)
    stats.add(batch, output)
    summary = stats.summary({}, world_size=1)
    assert summary["loss/toy"] == pytest.approx(float(values["toy"]))
    assert summary["toy/rows_per_micro_batch"] == float(batch.loss_mask.sum())


def test_a_term_must_log_what_it_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TERMS, "toy", LossTerm(toy_term, stats=("other",)))
    module = module_for("none")
    module.terms = {"clm": 1.0, "toy": 1.0}
    with pytest.raises(AssertionError, match="term toy logs"):
        module(batch_of())


def test_unregistered_objective_is_an_internal_error() -> None:
    with pytest.raises(AssertionError, match="unregistered loss term"):
        weights_of(objective="nope")


def test_compute_terms_of_clm_alone_is_the_clm() -> None:
    batch = batch_of()
    output = module_for("none")(batch)
    assert output.losses.stats == {} and list(output.losses.values) == ["clm"]
    torch.testing.assert_close(output.losses.total, output.losses.values["clm"])
