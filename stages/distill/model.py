"""The module DeepSpeed wraps: the student and the selection gate, and one micro-batch's losses.

Keeping the gate inside this module is what puts it in the optimizer (its own LR group), in every
ZeRO partition and in every checkpoint — the reference code re-created it each step instead
(DESIGN.md §9). `micro_batch_losses` reads like the recipe of losses.py, top to bottom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from stages.distill.batch import FusionBatch
from stages.distill.fusion import flat_support_ids, fuse_position_weights, fusion_cross_entropy
from stages.distill.gate_objective import GATE_OBJECTIVES, mixture_span_nll
from stages.distill.gating import SelectionGate
from stages.distill.losses import (
    LossTerms,
    clm_loss,
    combine_losses,
    feedback_loss,
    importance,
    next_token_ids,
    position_logsumexp,
)
from stages.distill.strategies import Strategy, sample_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FusionOutput:
    """What one micro-batch gives the training loop."""

    terms: LossTerms
    """clm, fusion, feedback and the weighted total (backpropagate `terms.total`)."""
    weights: torch.Tensor
    """[B, K] fp32 sample weights w, detached (for the log: selection counts, mean w)."""
    fused_positions: torch.Tensor
    """int64 scalar: positions with a fused target."""
    target_entropy: torch.Tensor
    """Scalar, detached: mean entropy of the fused target (nats)."""


class FusionModule(nn.Module):
    """Student + gate. Args are flat so the module can be built from any config.

    Args:
        student: a Hugging Face causal LM (any architecture with `.logits` in its output).
        strategy: from `strategies.parse_strategy`.
        num_teachers: K, the columns of the batch's `[B, K]` tensors.
        num_features: F, the gate's features per teacher (`batch.features` is `[B, K, F]`).
        lam, beta, tau: λ, β, τ of DESIGN.md §6.
        fusion_trains_gate: whether L_fuse reaches the gate through w (L_feed always does);
            ignored under `gate_objective="likelihood"`, where it never does.
        gate_objective: `fusion` (the gate learns from L_fuse, by `fusion_trains_gate`) or
            `likelihood` (from L_gate = `mixture_span_nll` of the batch's spans; see
            gate_objective.py). Only a strategy with a trained gate (`adaptive`) is affected.
        feedback_scope: `micro_batch` (importance of this micro-batch) or `step` (see
            `feedback_importance`).
    """

    def __init__(
        self,
        student: nn.Module,
        strategy: Strategy,
        num_teachers: int,
        *,
        lam: float,
        beta: float,
        tau: float,
        fusion_trains_gate: bool,
        feedback_scope: str,
        num_features: int,
        gate_objective: str,
    ) -> None:
        super().__init__()
        self.student = student
        self.strategy = strategy
        self.num_teachers = num_teachers
        self.lam, self.beta, self.tau = lam, beta, tau
        self.fusion_trains_gate = fusion_trains_gate
        if feedback_scope not in ("micro_batch", "step"):
            raise ValueError(f"feedback_scope must be micro_batch or step, got {feedback_scope!r}")
        self.feedback_scope = feedback_scope
        if gate_objective not in GATE_OBJECTIVES:
            raise ValueError(
                f"gate_objective must be one of {', '.join(GATE_OBJECTIVES)}, got {gate_objective!r}"
            )
        self.gate_objective = gate_objective
        if gate_objective == "likelihood" and strategy.needs_gate and num_teachers == 1:
            logger.warning(
                "gate_objective likelihood with one teacher: its weight is always 1, so the gate "
                "objective is a constant and trains nothing (training goes on)"
            )
        self._earlier_importance: torch.Tensor | None = None
        # Only `adaptive` owns a gate; `authors` draws a throw-away one per step (strategies.py).
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
        if self.feedback_scope == "micro_batch":
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
        """Losses of one micro-batch (shapes in `FusionBatch`); `generator` feeds `authors`."""
        logits = self.student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        if not self.strategy.uses_fusion:
            return micro_batch_losses(logits, batch, None, lam=self.lam, beta=self.beta)
        weights = sample_weights(
            self.strategy,
            batch.scores,
            batch.present,
            features=batch.features,
            bits_per_byte=batch.bits_per_byte,
            gate=self.gate,
            tau=self.tau,
            generator=generator,
        )
        likelihood = self.gate is not None and self.gate_objective == "likelihood"
        fusion_trains_gate = self.fusion_trains_gate and not likelihood
        return micro_batch_losses(
            logits,
            batch,
            weights if fusion_trains_gate else weights.detach(),
            lam=self.lam,
            # β weighs the feedback loss only where it can train something: with no trainable
            # gate (the fixed rules, authors) CV² is logged but adds no constant.
            beta=self.beta if self.gate is not None else 0.0,
            feedback_weights=weights,
            feedback_importance=self.feedback_importance(weights),
            gate_nll=(
                mixture_span_nll(weights, batch.span_loglik, batch.span_mask, batch.present, batch.span_bytes)
                if likelihood
                else None
            ),
        )


def micro_batch_losses(
    logits: torch.Tensor,
    batch: FusionBatch,
    weights: torch.Tensor | None,
    *,
    lam: float,
    beta: float,
    feedback_weights: torch.Tensor | None = None,
    feedback_importance: torch.Tensor | None = None,
    gate_nll: torch.Tensor | None = None,
) -> FusionOutput:
    """λ·CLM + (1−λ)·fusion + β·feedback of one micro-batch from the student's logits.

    Args:
        logits: `[B, T, V]` student logits.
        batch: the micro-batch (targets, supports, availability).
        weights: `[B, K]` sample weights w for the fusion loss (detached by the caller to keep the
            fusion loss from training the gate); None: CLM only (`none`), the one place that
            decides λ = 1 and β = 0 for it, whatever `lam` and `beta` are.
        feedback_weights: w with its grad path for the feedback loss (default: `weights`).
        feedback_importance: `[K]` importance for the feedback loss (default: that of
            `feedback_weights`; `FusionModule.feedback_importance` gives the step-scope one).
        gate_nll: L_gate of the `likelihood` gate objective, added to the total with weight 1;
            None: no such term.
    """
    lse = position_logsumexp(logits)  # the step's single logsumexp over the vocabulary
    if weights is None:
        clm = clm_loss(logits, batch.input_ids, batch.loss_mask, lse=lse)
        zero = clm.new_zeros(())
        terms = combine_losses(clm, zero, zero, lam=1.0, beta=0.0)
        no_weights = batch.scores.new_zeros(batch.scores.shape)
        return FusionOutput(terms, no_weights, batch.loss_mask.new_zeros((), dtype=torch.int64), zero)
    # One gather for the CLM targets and all K·k supports: autograd then builds a single sparse
    # [B, T, V] gradient buffer for both losses instead of one each.
    index = torch.cat(
        [next_token_ids(batch.input_ids).unsqueeze(-1), flat_support_ids(batch.support_ids)], -1
    )
    gathered = logits.gather(-1, index)
    clm = clm_loss(logits, batch.input_ids, batch.loss_mask, lse=lse, target_logits=gathered[..., 0])
    fused = fusion_cross_entropy(
        logits,
        batch.support_ids,
        batch.support_probs,
        fuse_position_weights(weights, batch.available),
        batch.loss_mask,
        lse=lse,
        support_logits=gathered[..., 1:],
        rest_mass=batch.rest_mass,
    )
    feedback_weights = weights if feedback_weights is None else feedback_weights
    if feedback_importance is None:
        feedback_importance = importance(feedback_weights)
    feedback = feedback_loss(feedback_importance)
    terms = combine_losses(clm, fused.loss, feedback, lam=lam, beta=beta, gate_nll=gate_nll)
    return FusionOutput(terms, feedback_weights.detach(), fused.fused_positions, fused.target_entropy)
