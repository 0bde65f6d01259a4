"""FusionModule: the single combined gather equals the losses computed one by one (values and
gradients), `none` is CLM only, and the gate is a submodule (so DeepSpeed wraps and saves it)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from stages.align.sample import AlignedTargets
from stages.distill.batch import AlignedSample, collate_samples
from stages.distill.fusion import fuse_position_weights, fusion_cross_entropy
from stages.distill.gate_objective import mixture_span_nll
from stages.distill.losses import clm_loss, feedback_loss, importance, position_logsumexp
from stages.distill.metrics import StepStats
from stages.distill.model import FusionModule
from stages.distill.settings import DistillSettings
from stages.distill.strategies import parse_strategy, sample_weights

VOCAB = 50


class TinyLM(nn.Module):
    """Embedding + linear head: enough of a causal LM for the loss plumbing."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.head(self.embed(input_ids))})()


def batch_of(seed: int = 0, teachers: int = 2, absent_teacher: int | None = None, spans: int = 0):
    """Two samples (7 and 4 tokens; teacher 0 absent from the second); with `spans`, the first has
    that many common-boundary spans and the second one fewer (padding), with random logliks."""
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng(seed + 1000)  # the optional arrays leave the others unchanged
    samples = []
    for b, n in enumerate((7, 4)):
        targets = []
        for k in range(teachers):
            if k == absent_teacher or (b == 1 and k == 0):
                targets.append(None)  # teacher 0 has nothing for sample 1
                continue
            probs = rng.random((n - 1, 3)).astype(np.float32)
            targets.append(
                AlignedTargets(
                    support_ids=rng.integers(0, VOCAB, (n - 1, 3)),
                    support_probs=probs / probs.sum(1, keepdims=True),
                    rest_mass=np.zeros(n - 1, np.float32),
                    available=rng.random(n - 1) < 0.7,
                    n_aligned=n - 1,
                    mapped_mass=float(n - 1),
                    n_candidates=3 * (n - 1),
                    n_unmapped=0,
                )
            )
        present = np.array([t is not None for t in targets])
        span_loglik = None
        if spans:
            span_loglik = np.where(present[:, None], -extra.random((teachers, spans - b)) * 3, 0.0)
        samples.append(
            AlignedSample(
                f"s{b}",
                rng.integers(0, VOCAB, n).astype(np.int32),
                tuple(targets),
                rng.random((teachers, 1)).astype(np.float32),
                bits_per_byte=np.where(present, 0.5 + extra.random(teachers), np.inf).astype(np.float32),
                span_loglik=None if span_loglik is None else span_loglik.astype(np.float32),
                span_bytes=10 * spans,
            )
        )
    return collate_samples(samples, teachers)


def module_for(strategy: str, teachers: int = 2, *, num_features: int = 1, **settings) -> FusionModule:
    """The module of `strategy` with the distill defaults (λ 0.9, β 0.5, τ 0.15) but `settings`."""
    torch.manual_seed(0)
    distill = DistillSettings(**settings)
    return FusionModule(TinyLM(), parse_strategy(strategy), teachers, distill, num_features=num_features)


def test_one_gather_equals_the_losses_one_by_one_with_the_same_gradients() -> None:
    batch = batch_of()
    module = module_for("adaptive")
    output = module(batch)
    output.losses.total.backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters()}

    module.zero_grad()
    logits = module.student(batch.input_ids).logits
    lse = position_logsumexp(logits)
    clm = clm_loss(logits, batch.input_ids, batch.loss_mask, lse=lse)
    weights = sample_weights(module.strategy, batch.scores, batch.present, gate=module.gate, tau=0.15)
    fused = fusion_cross_entropy(
        logits,
        batch.support_ids,
        batch.support_probs,
        fuse_position_weights(weights, batch.available),
        batch.loss_mask,
        lse=lse,
    )
    reference = 0.9 * clm + 0.1 * fused.loss + 0.5 * feedback_loss(importance(weights))
    reference.backward()
    torch.testing.assert_close(output.losses.total, reference)
    for name, parameter in module.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, msg=name)
    assert any(p.grad.abs().sum() > 0 for p in module.gate.parameters())  # the gate learns


def test_none_is_clm_only_and_has_no_gate() -> None:
    batch = batch_of()
    module = module_for("none")
    output = module(batch)
    logits = module.student(batch.input_ids).logits
    torch.testing.assert_close(output.losses.total, clm_loss(logits, batch.input_ids, batch.loss_mask))
    assert module.gate is None and module.gate_parameters() == [] and output.weights.eq(0).all()


def test_gate_is_a_submodule_and_feedback_only_weighs_when_it_trains() -> None:
    adaptive, uniform = module_for("adaptive"), module_for("uniform")
    assert any(name.startswith("gate.") for name, _ in adaptive.named_parameters())
    out = uniform(batch_of())
    # uniform: CV² is logged but β adds nothing (no trainable gate).
    expected = 0.9 * out.losses.values["clm"] + 0.1 * out.losses.values["fusion"]
    torch.testing.assert_close(out.losses.total, expected)


@pytest.mark.gpu
def test_losses_and_gradients_on_cuda_match_the_cpu() -> None:
    batch = batch_of(spans=3)
    cpu, cuda = module_for("adaptive"), module_for("adaptive").cuda()
    want, got = cpu(batch), cuda(batch.to("cuda"))
    for name, value in want.losses.detached().items():
        assert got.losses.detached()[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    want.losses.total.backward()
    got.losses.total.backward()
    for (name, p), q in zip(cpu.named_parameters(), cuda.parameters(), strict=True):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fusion_trains_gate_flag_detaches_the_fusion_path() -> None:
    batch = batch_of()
    module = module_for("adaptive", beta=0.0, fusion_trains_gate=False)
    module(batch).losses.total.backward()
    # β = 0 and the fusion path detached: nothing reaches the gate.
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.gate.parameters())


def step_scope_module() -> FusionModule:
    return module_for("adaptive", feedback_scope="step")


def test_step_scope_feedback_sums_the_steps_micro_batches_with_grad_on_the_current_one() -> None:
    module = step_scope_module()
    first, second = batch_of(seed=1), batch_of(seed=2)
    module.start_step()
    w1 = module(first).weights
    out = module(second)
    w2 = sample_weights(module.strategy, second.scores, second.present, gate=module.gate, tau=0.15)
    torch.testing.assert_close(out.losses.values["feedback"], feedback_loss(importance(w1) + importance(w2)))

    # Only the second micro-batch's weights carry gradient: the same as CV² of (constant + I₂).
    module.zero_grad()
    out.losses.values["feedback"].backward()
    got = [p.grad.clone() for p in module.gate.parameters()]
    module.zero_grad()
    feedback_loss(importance(w1).detach() + importance(w2)).backward()
    for g, p in zip(got, module.gate.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)

    # A new optimizer step starts from nothing: its first micro-batch alone.
    module.start_step()
    again = module(first)
    torch.testing.assert_close(again.losses.values["feedback"], feedback_loss(importance(w1)))
    micro = module_for("adaptive")(first)
    torch.testing.assert_close(again.losses.values["feedback"], micro.losses.values["feedback"])


def _step_scope_rank(rank: int, world_size: int, init_file: str, results) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        module = step_scope_module()  # same seed: the same gate on both ranks, as after init
        module.start_step()
        out = module(batch_of(seed=10 + rank))
        out.losses.values["feedback"].backward()
        results[rank] = (
            out.weights.sum(0),
            out.losses.values["feedback"].detach(),
            module.gate.layers[0].weight.grad,
        )
    finally:
        torch.distributed.destroy_process_group()


def test_step_scope_feedback_all_reduces_importance_over_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_step_scope_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    both = results[0][0] + results[1][0]
    expected = feedback_loss(both)
    torch.testing.assert_close(results[0][1], expected)
    torch.testing.assert_close(results[1][1], expected)
    # Each rank's gradient is that of CV²(the other rank's importance as a constant + its own).
    for rank in (0, 1):
        module = step_scope_module()
        batch = batch_of(seed=10 + rank)
        weights = sample_weights(module.strategy, batch.scores, batch.present, gate=module.gate, tau=0.15)
        feedback_loss(results[1 - rank][0] + importance(weights)).backward()
        torch.testing.assert_close(results[rank][2], module.gate.layers[0].weight.grad)


def test_likelihood_objective_trains_the_gate_by_the_span_nll_and_the_student_as_before() -> None:
    batch = batch_of(spans=4)
    module = module_for("adaptive", gate_objective="likelihood", beta=0.0)
    output = module(batch)
    weights = sample_weights(module.strategy, batch.scores, batch.present, gate=module.gate, tau=0.15)
    gate_nll = mixture_span_nll(weights, batch.span_loglik, batch.span_mask, batch.present, batch.span_bytes)
    torch.testing.assert_close(output.losses.values["gate_nll"], gate_nll)
    expected = 0.9 * output.losses.values["clm"] + 0.1 * output.losses.values["fusion"] + gate_nll
    torch.testing.assert_close(output.losses.total, expected)
    assert output.losses.detached()["gate_nll"] == pytest.approx(float(gate_nll))
    output.losses.total.backward()
    student_grads = {n: p.grad.clone() for n, p in module.student.named_parameters()}
    # The gate's gradient is that of L_gate alone: the fusion loss reaches the student only
    # (although fusion_trains_gate is on).
    got = [p.grad.clone() for p in module.gate.parameters()]
    module.zero_grad()
    gate_nll.backward()
    for g, p in zip(got, module.gate.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    # The student learns exactly what it learns under the `fusion` objective (same init, same w).
    fusion = module_for("adaptive", beta=0.0)
    fusion(batch).losses.total.backward()
    for name, parameter in fusion.student.named_parameters():
        torch.testing.assert_close(student_grads[name], parameter.grad, msg=name)


def test_fusion_objective_has_no_gate_term() -> None:
    output = module_for("adaptive")(batch_of(spans=3))
    assert "gate_nll" not in output.losses.values and "gate_nll" not in output.losses.detached()


def test_likelihood_objective_only_affects_a_trained_gate() -> None:
    batch = batch_of(spans=3)
    for strategy in ("min_ce", "uniform", "random_gate"):
        output = module_for(strategy, gate_objective="likelihood")(batch)
        assert "gate_nll" not in output.losses.values


def test_likelihood_with_one_teacher_warns_that_the_gate_is_a_constant(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="stages.distill.model"):
        module = module_for("adaptive", teachers=1, gate_objective="likelihood")
    assert "one teacher" in caplog.text and "constant" in caplog.text
    batch = batch_of(teachers=1, spans=2)
    output = module(batch)
    output.losses.total.backward()
    assert torch.isfinite(output.losses.total)
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in module.gate.parameters())


def test_bpb_strategies_read_the_batchs_bits_per_byte() -> None:
    batch = batch_of(teachers=3)
    bpb = batch.bits_per_byte.masked_fill(~batch.present, float("inf"))
    expected = torch.nn.functional.one_hot(bpb.argmin(-1), 3).float()
    torch.testing.assert_close(module_for("min_bpb", teachers=3)(batch).weights, expected)
    avg = module_for("avg_bpb", teachers=3)(batch).weights
    assert (avg[~batch.present] == 0).all()
    torch.testing.assert_close(avg.sum(-1), torch.ones(2))


def test_step_stats_log_gate_nll_only_when_there_is_one() -> None:
    names = ("a", "b")
    batch = batch_of(spans=3)
    fusion = module_for("adaptive")
    stats = StepStats(names, fusion.terms)
    stats.add(batch, fusion(batch))
    assert "loss/gate_nll" not in stats.summary({}, world_size=1)
    likelihood = module_for("adaptive", gate_objective="likelihood")
    stats = StepStats(names, likelihood.terms)
    outputs = [likelihood(batch) for _ in range(2)]
    for output in outputs:
        stats.add(batch, output)
    summary = stats.summary({}, world_size=1)
    mean = sum(float(o.losses.values["gate_nll"]) for o in outputs) / 2
    assert summary["loss/gate_nll"] == pytest.approx(mean)


def test_step_stats_log_the_gate_against_its_oracles() -> None:
    batch = batch_of(teachers=3, spans=4)  # sample 0: all three teachers; sample 1: teacher 0 absent
    module = module_for("min_bpb", teachers=3)
    stats = StepStats(("a", "b", "c"), module.terms)
    output = module(batch)
    stats.add(batch, output)
    summary = stats.summary({}, world_size=1)
    # min_bpb picks the oracle teacher by definition; the EM mixture can only do better.
    assert summary["gate/contested_samples"] == 2 and summary["gate/oracle_agreement"] == 1.0
    assert summary["gate/bpb/gate"] == pytest.approx(summary["gate/bpb/oracle_teacher"])
    assert summary["gate/bpb/oracle_mixture"] <= summary["gate/bpb/oracle_teacher"] + 1e-9
    assert summary["gate/bpb/oracle_mixture"] <= summary["gate/bpb/best_single"] + 1e-9
    # Each teacher alone over the samples it is present on (padding spans hold 0), best of three.
    nats = -(batch.span_loglik.double() * batch.span_mask.unsqueeze(1)).sum(-1)  # [B, K]
    present = batch.present.double()
    single = (nats * present).sum(0) / (batch.span_bytes.double().unsqueeze(1) * present).sum(0)
    assert summary["gate/bpb/best_single"] == pytest.approx(float(single.min()) / math.log(2))
    # `none` has no weights: nothing to diagnose, no keys.
    none = module_for("none", teachers=3)
    stats = StepStats(("a", "b", "c"), none.terms)
    stats.add(batch, none(batch))
    assert not any(key.startswith("gate/bpb") for key in stats.summary({}, world_size=1))
