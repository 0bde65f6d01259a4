"""The module DeepSpeed wraps: the student and the selection gate, and one micro-batch's losses.

Keeping the gate inside this module is what puts it in the optimizer (its own LR group), in every
ZeRO partition and in every checkpoint — the reference code re-created it each step instead
(docs/design.md §13). `micro_batch_losses` computes the run's loss terms (loss_terms.py) from one forward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from stages.distill.batch import FusionBatch
from stages.distill.chunk_loss import space_rows, student_space_logprob
from stages.distill.fusion import flat_support_ids
from stages.distill.gating import SelectionGate
from stages.distill.loss_terms import TERMS, StepLosses, TermInputs, compute_terms, term_weights
from stages.distill.losses import importance, next_token_ids, student_normaliser
from stages.distill.settings import DistillSettings
from stages.distill.strategies import Strategy, sample_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FusionOutput:
    """What one micro-batch gives the training loop."""

    losses: StepLosses
    """Every term, its statistics and the weighted total (backpropagate `losses.total`)."""
    weights: torch.Tensor
    """[B, K] fp32 sample weights w, detached (for the log: selection counts, mean w); zeros for
    `none`."""


class FusionModule(nn.Module):
    """Student + gate.

    Args:
        student: a Hugging Face causal LM (any architecture with `.logits` in its output).
        strategy: from `strategies.parse_strategy`.
        num_teachers: K, the columns of the batch's `[B, K]` tensors.
        settings: the run's `distill` settings: the loss terms and their weights
            (`loss_terms.term_weights`), τ, `fusion_trains_gate`, `feedback_scope`, and what each
            term reads of its own.
        num_features: F, the gate's features per teacher (`batch.features` is `[B, K, F]`).
        space_mask: `[V]` bool, the student ids that start a new word (whitespace-initial or
            special): the `chunk` objective's σ correction; None where no term needs it.
    """

    def __init__(
        self,
        student: nn.Module,
        strategy: Strategy,
        num_teachers: int,
        settings: DistillSettings,
        *,
        num_features: int,
        space_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.strategy = strategy
        self.num_teachers = num_teachers
        self.settings = settings
        self.terms = term_weights(settings, strategy)
        # The distillation term trains the gate through w unless the gate has an objective of its own.
        self.distillation_trains_gate = settings.fusion_trains_gate and "gate_nll" not in self.terms
        if "gate_nll" in self.terms and num_teachers == 1:
            logger.warning(
                "gate_objective likelihood with one teacher: its weight is always 1, so the gate "
                "objective is a constant and trains nothing (training goes on)"
            )
        self.register_buffer("space_mask", space_mask, persistent=False)
        self._earlier_importance: torch.Tensor | None = None
        # Only `adaptive` owns a gate; `random_gate` draws a throw-away one per step (strategies.py).
        self.gate = SelectionGate(num_teachers, num_features) if strategy.needs_gate else None

    def student_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def gate_parameters(self) -> list[nn.Parameter]:
        return [] if self.gate is None else list(self.gate.parameters())

    def start_step(self) -> None:
        """Forget the importance summed so far: the recipe calls it before each optimizer step."""
        self._earlier_importance = None

    def feedback_importance(self, weights: torch.Tensor) -> torch.Tensor:
        """The `[K]` importance the feedback loss sees.

        `micro_batch`: I = Σ_b w_bk of this micro-batch. `step`: this micro-batch's importance
        plus that of the step's earlier micro-batches and of every other rank's current one, which
        enter as constants. Micro-batch m of a step thus minimises CV² of the importance of
        micro-batches 1..m on all ranks, and the last one that of the whole optimizer step; only
        this rank's current weights get a gradient (the earlier ones had theirs in their own
        backward). Checkpoints fall between steps, so nothing here needs saving.
        """
        mine = importance(weights)
        if self.settings.feedback_scope == "micro_batch":
            return mine
        everyone = mine.detach().clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(everyone)  # every rank runs the same micro-batch count: no hang
        total = mine + (everyone - mine.detach())
        if self._earlier_importance is not None:
            total = total + self._earlier_importance
            everyone = everyone + self._earlier_importance
        self._earlier_importance = everyone
        return total

    def forward(self, batch: FusionBatch, generator: torch.Generator | None = None) -> FusionOutput:
        """Losses of one micro-batch (shapes in `FusionBatch`); `generator` feeds `random_gate`."""
        logits = self.student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        if not self.strategy.uses_fusion:
            return micro_batch_losses(logits, batch, self.terms, self.settings)
        weights = sample_weights(
            self.strategy,
            batch.scores,
            batch.present,
            features=batch.features,
            bits_per_byte=batch.bits_per_byte,
            gate=self.gate,
            tau=self.settings.tau,
            generator=generator,
        )
        return micro_batch_losses(
            logits,
            batch,
            self.terms,
            self.settings,
            space_mask=self.space_mask,
            weights=weights if self.distillation_trains_gate else weights.detach(),
            gate_weights=weights,
            feedback_importance=self.feedback_importance(weights) if "feedback" in self.terms else None,
        )


def micro_batch_losses(
    logits: torch.Tensor,
    batch: FusionBatch,
    terms: dict[str, float],
    settings: DistillSettings,
    *,
    space_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    gate_weights: torch.Tensor | None = None,
    feedback_importance: torch.Tensor | None = None,
) -> FusionOutput:
    """The weighted loss terms of one micro-batch from the student's logits (loss_terms.py).

    Args:
        logits: `[B, T, V]` student logits.
        batch: the micro-batch (targets, supports, availability, spans).
        terms: term name → weight (`loss_terms.term_weights`).
        settings: the run's `distill` settings (what each term reads of its own).
        space_mask: `[V]` bool student ids that start a new word (`FusionModule`).
        weights: `[B, K]` sample weights w for the distillation terms (detached by the caller to
            keep them from training the gate); None for `none`.
        gate_weights: w with its grad path (feedback, gate objective); default: `weights`.
        feedback_importance: `[K]` importance for the feedback loss; default: that of
            `gate_weights` (`FusionModule.feedback_importance` gives the step-scope one).
    """
    gate_weights = weights if gate_weights is None else gate_weights
    if feedback_importance is None and gate_weights is not None:
        feedback_importance = importance(gate_weights)
    # One normaliser for every term: the logsumexp over the vocabulary, one gather of the next
    # tokens and (when a term reads them) all K·k supports, and the σ rows of the chunk loss, with
    # a single [B, T, V] gradient buffer among them (losses.student_normaliser).
    index = next_token_ids(batch.input_ids).unsqueeze(-1)
    supports = any(TERMS[name].reads_supports for name in terms)
    if supports:
        index = torch.cat([index, flat_support_ids(batch.support_ids)], -1)
    rows = None
    if any(TERMS[name].reads_space for name in terms) and bool((batch.chunk_end_row >= 0).any()):
        if space_mask is None:
            raise RuntimeError("the batch asks for the σ correction but the run has no student space mask")
        rows = space_rows(batch.chunk_end_row, logits.shape[1])
    lse, gathered, space_lse = student_normaliser(logits, index, rows, space_mask)
    inputs = TermInputs(
        batch=batch,
        logits=logits,
        lse=lse,
        target_logits=gathered[..., 0],
        support_logits=gathered[..., 1:] if supports else None,
        weights=weights,
        gate_weights=gate_weights,
        feedback_importance=feedback_importance,
        settings=settings,
        student_space=None if rows is None else student_space_logprob(space_lse, lse, batch.chunk_end_row),
    )
    losses = compute_terms(terms, inputs)
    shown = batch.scores.new_zeros(batch.scores.shape) if gate_weights is None else gate_weights.detach()
    return FusionOutput(losses, shown)
