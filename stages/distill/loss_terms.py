"""The loss terms of stage two: each one function and one weight, summed by the training module.

A term reads `TermInputs` (the batch, the student's logits and what every term shares: one
logsumexp over the vocabulary, one gather of the logits at the next tokens and at the teachers'
supports, the σ correction at the chunk ends, all with one gradient buffer; the sample weights
w) and returns a `TermValue`: its scalar loss and the sums it logs.
`term_weights` decides once which terms a run computes and their weights:

    L = λ·L_clm + (1 − λ)·L_objective + β·L_feedback [+ L_gate_nll]

`objective` is `distill.objective`, the distillation term: `fusion` (the token-level mixture of
the teachers' vocabulary-mapped top-k), `chunk` (ALM) or `exact_token` (docs/design.md §7.2,
§7.4, §7.5; the registry: §7.7); `none` trains on L_clm alone (λ = 1);
the feedback loss gets β only where there is a gate to train (under the fixed rules CV² is
logged with weight 0); L_gate_nll (weight 1) is the `likelihood` gate objective.

Adding a term: write its function here (or its maths in a module of its own and a thin function
here), register it in `TERMS` with the statistics it logs, and give it its weight in
`term_weights` from one setting of `DistillSettings` (+ the loader fields it reads). Logging, the
run summary and the export iterate over the names; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from stages.distill.batch import FusionBatch
from stages.distill.chunk_loss import chunk_distillation_loss
from stages.distill.fusion import fuse_position_weights, fusion_cross_entropy
from stages.distill.gate_objective import mixture_span_nll
from stages.distill.losses import clm_loss, feedback_loss
from stages.distill.settings import DistillSettings
from stages.distill.strategies import Strategy


@dataclass(frozen=True)
class TermInputs:
    """What a loss term may read of one micro-batch (B samples, T rows, K teachers, k top-k)."""

    batch: FusionBatch
    logits: torch.Tensor
    """`[B, T, V]` student logits; row j predicts token j + 1 (losses.py)."""
    lse: torch.Tensor
    """`[B, T]` log Σ_v exp(logits), the step's single logsumexp over the vocabulary."""
    target_logits: torch.Tensor
    """`[B, T]` the logits at the next tokens (`losses.next_token_ids`)."""
    support_logits: torch.Tensor | None
    """`[B, T, K·k]` the logits at `fusion.flat_support_ids(batch.support_ids)`, gathered with
    `target_logits` in one gather (one sparse gradient buffer); None unless a term reads supports."""
    weights: torch.Tensor | None
    """`[B, K]` sample weights w for the distillation terms: detached where the distillation loss
    must not train the gate; None for `none`."""
    gate_weights: torch.Tensor | None
    """`[B, K]` the same weights with their grad path to the gate (feedback, gate objective)."""
    feedback_importance: torch.Tensor | None
    """`[K]` the importance the feedback loss sees (`FusionModule.feedback_importance`)."""
    settings: DistillSettings
    """The run's `distill` settings: each term reads its own (e.g. `chunk_temperature`)."""
    student_space: torch.Tensor | None = None
    """`[B, S]` log σ_S at each chunk's end (the chunk loss's σ correction; 0 where none applies);
    None where no chunk of the batch is corrected or no term reads it."""


@dataclass(frozen=True)
class TermValue:
    """One term's scalar loss and its log statistics (additive sums over the micro-batch)."""

    loss: torch.Tensor
    stats: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossTerm:
    """A registered term: its function, the sums it logs and the rates made of them."""

    compute: Callable[[TermInputs], TermValue]
    stats: tuple[str, ...] = ()
    """The keys of `TermValue.stats` (the same on every micro-batch: the log's layout is fixed)."""
    rates: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Logged name → (numerator, denominator): each a stat of this term or a count of the log
    window (`micro_batches`, `samples`, `student_rows`, `tokens`)."""
    reads_supports: bool = False
    """Whether the term reads `support_logits` (the shared gather then includes the supports)."""
    reads_space: bool = False
    """Whether the term reads `student_space` (the step's normaliser then computes it)."""


def clm_term(x: TermInputs) -> TermValue:
    """Next-token cross-entropy of the student (losses.clm_loss)."""
    return TermValue(clm_loss(x.logits, x.batch.input_ids, x.batch.loss_mask, x.lse, x.target_logits))


def fusion_term(x: TermInputs) -> TermValue:
    """Cross-entropy against the w'-mixture of the teachers' sparse targets (fusion.py)."""
    assert x.weights is not None, "the fusion term needs sample weights"
    b = x.batch
    fused = fusion_cross_entropy(
        x.logits,
        b.support_ids,
        b.support_probs,
        fuse_position_weights(x.weights, b.available),
        b.loss_mask,
        lse=x.lse,
        support_logits=x.support_logits,
        rest_mass=b.rest_mass,
    )
    positions = fused.fused_positions.to(torch.float64)
    return TermValue(
        fused.loss,
        {"fused_positions": positions, "entropy_sum": fused.target_entropy.to(torch.float64) * positions},
    )


def feedback_term(x: TermInputs) -> TermValue:
    """CV² of the gate importance (losses.feedback_loss); 0 for K = 1."""
    assert x.feedback_importance is not None, "the feedback term needs the gate importance"
    return TermValue(feedback_loss(x.feedback_importance))


def gate_nll_term(x: TermInputs) -> TermValue:
    """L_gate of the `likelihood` gate objective, nats per byte of the spans (gate_objective.py)."""
    assert x.gate_weights is not None, "the gate objective needs the gate's weights"
    b = x.batch
    return TermValue(mixture_span_nll(x.gate_weights, b.span_loglik, b.span_mask, b.present, b.span_bytes))


def chunk_term(x: TermInputs) -> TermValue:
    """Chunk-level likelihood matching against the w-mixture of the teachers (chunk_loss.py)."""
    assert x.weights is not None, "the chunk term needs sample weights"
    b = x.batch
    next_logprobs = x.target_logits.to(x.lse.dtype) - x.lse
    loss, chunks, rows = chunk_distillation_loss(
        next_logprobs,
        b.row_chunk,
        b.span_mask,
        b.span_loglik,
        x.weights,
        b.present,
        x.settings.chunk_temperature,
        student_space=x.student_space,
        teacher_space=None if x.student_space is None else b.chunk_space,
    )
    unchunked = (b.present.any(dim=-1) & ~b.span_mask.any(dim=-1)).sum()
    return TermValue(
        loss,
        {
            "chunks": chunks.to(torch.float64),
            "rows": rows.to(torch.float64),
            "unchunked_samples": unchunked.to(torch.float64),
        },
    )


TERMS: dict[str, LossTerm] = {
    "clm": LossTerm(clm_term),
    "fusion": LossTerm(
        fusion_term,
        stats=("fused_positions", "entropy_sum"),
        rates={
            "fusion/fused_rate": ("fused_positions", "student_rows"),
            "fusion/target_entropy": ("entropy_sum", "fused_positions"),
        },
        reads_supports=True,
    ),
    # Exact-token KD: the fusion maths on the loader's exact-token targets (loader.py).
    "exact_token": LossTerm(
        fusion_term,
        stats=("fused_positions", "entropy_sum"),
        rates={
            "exact_token/rate": ("fused_positions", "student_rows"),
            "exact_token/target_entropy": ("entropy_sum", "fused_positions"),
        },
        reads_supports=True,
    ),
    "feedback": LossTerm(feedback_term, rates={"gate/cv2": ("loss", "micro_batches")}),
    "gate_nll": LossTerm(gate_nll_term),
    "chunk": LossTerm(
        chunk_term,
        stats=("chunks", "rows", "unchunked_samples"),
        rates={
            "chunk/covered_rate": ("rows", "student_rows"),
            "chunk/rows_per_chunk": ("rows", "chunks"),
            "chunk/unchunked_rate": ("unchunked_samples", "samples"),
        },
        reads_space=True,
    ),
}
"""Every loss term by name; `term_weights` says which a run computes."""


def term_weights(settings: DistillSettings, strategy: Strategy) -> dict[str, float]:
    """The terms a run computes, name → weight in the total (module docstring): λ for CLM and
    1 − λ for `settings.objective`; `none` trains on CLM alone with weight 1, whatever λ is; the
    feedback loss gets β where the strategy trains a gate, else 0 (logged); the `likelihood` gate
    objective adds `gate_nll` with weight 1 (gate runs only)."""
    if not strategy.uses_fusion:
        return {"clm": 1.0}
    has_gate = strategy.needs_gate
    weights = {"clm": settings.lam, settings.objective: 1.0 - settings.lam}
    weights["feedback"] = settings.beta if has_gate else 0.0
    if has_gate and settings.gate_objective == "likelihood":
        weights["gate_nll"] = 1.0
    assert weights.keys() <= TERMS.keys(), f"unregistered loss term in {sorted(weights)}"
    return weights


@dataclass(frozen=True)
class StepLosses:
    """The terms of one micro-batch: unweighted values, their statistics, the weighted total."""

    values: dict[str, torch.Tensor]
    """Term name → scalar loss (unweighted)."""
    stats: dict[str, torch.Tensor]
    """`NAME/STAT` → the term's additive log sums."""
    total: torch.Tensor
    """Σ weight · value: what the recipe backpropagates."""

    def detached(self) -> dict[str, float]:
        """`total` and every term as Python floats (one host sync for all)."""
        names = ["total", *self.values]
        values = torch.stack(
            [self.total.detach().float(), *(v.detach().float() for v in self.values.values())]
        )
        return dict(zip(names, values.tolist(), strict=True))


def compute_terms(weights: Mapping[str, float], inputs: TermInputs) -> StepLosses:
    """Every term of `weights` on `inputs`, and their weighted sum."""
    values: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    total = inputs.lse.new_zeros(())
    for name, weight in weights.items():
        term = TERMS[name]
        value = term.compute(inputs)
        assert set(value.stats) == set(term.stats), f"term {name} logs {sorted(value.stats)}"
        values[name] = value.loss
        stats.update({f"{name}/{key}": stat for key, stat in value.stats.items()})
        total = total + weight * value.loss
    return StepLosses(values, stats, total)
