"""Fusion strategies: the one place that turns teacher scores into per-sample weights [B, K].

| name          | weights w_b                                                    | source          |
|---------------|----------------------------------------------------------------|-----------------|
| `adaptive`    | select_teachers(gate(x_b), tau) with the persistent, trained gate | Kong et al.  |
| `min_ce`      | one-hot on the best score r_b among present teachers           | FuseLLM MinCE   |
| `avg_ce`      | softmax(r_b) over present teachers                             | FuseLLM AvgCE, as coded |
| `min_bpb`     | one-hot on the lowest bits per byte among present teachers     | tokenizer-neutral MinCE |
| `avg_bpb`     | softmax(2^(−bpb_b)) over present teachers                      | tokenizer-neutral AvgCE |
| `uniform`     | 1/n over the n present teachers                                | baseline        |
| `single:NAME` | one-hot on teacher NAME where present                          | baseline        |
| `random_gate` | select_teachers(fresh random gate(x_b), tau), nothing trained  | released code   |
| `none`        | no fusion (λ = 1): CLM-only continual training                 | baseline        |

Scores r are "higher is better": the first gate feature, exp(−ce) under `gate_features`
`exp_neg_ce` (the default) and `all`, 2^(−bits per byte) under `bits_per_byte`, where `min_ce`
and `avg_ce` thus rank by bits per byte despite their names (`min_ce` then picks the teacher
`min_bpb` picks). The gates read the features x (`[B, K, F]`, the scores alone when F = 1), the
fixed rules rank by the scores. `random_gate` was called `random_gate` (still accepted,
settings.STRATEGY_ALIASES). FuseLLM's per-token CE is
not comparable across tokenizers (a teacher with longer tokens has a higher CE per token on the
same text); `min_bpb` / `avg_bpb` rank by each teacher's bits per byte instead, whatever the gate
features are. Absent teachers always get weight 0 and a sample with no teacher gets an all-zero
row, which drops it from the fusion loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stages.distill.gating import SelectionGate, masked_softmax, select_teachers
from stages.distill.settings import STRATEGY_NAMES, canonical_strategy

_SINGLE_PREFIX = "single:"


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name; tells the training loop what to build and which loss terms."""

    kind: str
    """One of `STRATEGY_NAMES`, with `single:NAME` reduced to "single"."""
    teacher: str | None = None
    """The teacher name of `single:NAME`, else None."""
    teacher_index: int | None = None
    """Column of that teacher in the `[B, K]` tensors, else None."""

    @property
    def name(self) -> str:
        """The spelling the user wrote (for logs and run names)."""
        return f"{_SINGLE_PREFIX}{self.teacher}" if self.kind == "single" else self.kind

    @property
    def needs_gate(self) -> bool:
        """Whether the run builds a persistent `SelectionGate` (in the optimizer, checkpointed)."""
        return self.kind == "adaptive"

    @property
    def uses_fusion(self) -> bool:
        """Whether the fusion loss is computed at all (`none` trains on CLM alone:
        `model.micro_batch_losses` without weights)."""
        return self.kind != "none"


def parse_strategy(spec: str, teacher_names: Sequence[str] = ()) -> Strategy:
    """Validate a strategy name such as "adaptive" or "single:qwen" (a former name, such as
    `random_gate`, gives the strategy under its current name).

    Raises:
        ValueError: unknown strategy (lists the valid ones), or `single:` naming a teacher that
            is not in `teacher_names` (lists them).
    """
    spec = canonical_strategy(spec)
    if spec.startswith(_SINGLE_PREFIX):
        teacher = spec[len(_SINGLE_PREFIX) :]
        if teacher not in teacher_names:
            raise ValueError(
                f"strategy {spec!r} names teacher {teacher!r}, which is not a configured "
                f"teacher; use one of: {', '.join(map(repr, teacher_names)) or '(none configured)'}"
            )
        return Strategy(kind="single", teacher=teacher, teacher_index=list(teacher_names).index(teacher))
    if spec not in STRATEGY_NAMES:
        raise ValueError(f"unknown fusion strategy {spec!r}; valid: {', '.join(STRATEGY_NAMES)}")
    return Strategy(kind=spec)


def sample_weights(
    strategy: Strategy,
    scores: torch.Tensor,
    present: torch.Tensor,
    *,
    features: torch.Tensor | None = None,
    bits_per_byte: torch.Tensor | None = None,
    gate: SelectionGate | None = None,
    tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample teacher weights w of `strategy`.

    Args:
        strategy: from `parse_strategy`.
        scores: `[B, K]` per-sample teacher scores, higher is better.
        present: `[B, K]` bool, false where a teacher has no data for the sample.
        features: `[B, K, F]` what the gates of `adaptive` and `random_gate` read (`FusionBatch.features`);
            None: the scores, F = 1.
        bits_per_byte: `[B, K]` each teacher's bits per byte on the sample (`FusionBatch.bits_per_byte`),
            what `min_bpb` / `avg_bpb` rank by; any value (inf, NaN) where the teacher is absent.
        gate: the persistent gate; required when `strategy.needs_gate`, ignored otherwise.
        tau: selection threshold of `adaptive` and `random_gate`.
        generator: CPU RNG for the fresh gate of `random_gate` (global RNG when None); keep it in
            the checkpoint for an exact resume.

    Returns:
        `[B, K]` fp32 weights, rows summing to 1 (0 for samples with no present teacher).
        Only `adaptive` returns weights with a grad path (to the gate); `none` returns zeros.

    Raises:
        ValueError: `adaptive` without `gate`, or `min_bpb` / `avg_bpb` without `bits_per_byte`.
    """
    present = present.bool()
    scores = scores.float()
    features = scores.unsqueeze(-1) if features is None else features
    match strategy.kind:
        case "adaptive":
            if gate is None:
                raise ValueError("strategy 'adaptive' needs the run's SelectionGate; pass gate=")
            return select_teachers(gate(features, present), tau)
        case "random_gate":
            return _fresh_gate_weights(features, present, tau, generator)
        case "min_ce":
            best = scores.masked_fill(~present, float("-inf")).argmax(dim=-1)
            return _one_hot(best, present)
        case "avg_ce":
            return masked_softmax(scores, present)
        case "min_bpb":
            best = _bpb_ranking(bits_per_byte, present, strategy).argmax(dim=-1)
            return _one_hot(best, present)
        case "avg_bpb":
            # avg_ce's formula on the per-byte probability 2^(−bpb) instead of exp(−ce).
            bpb = _bits_per_byte(bits_per_byte, strategy)
            return masked_softmax(torch.exp2(-bpb), present)
        case "uniform":
            counts = present.sum(dim=-1, keepdim=True).clamp_min(1)
            return present.float() / counts
        case "single":
            assert strategy.teacher_index is not None
            index = torch.full_like(present[:, 0], strategy.teacher_index, dtype=torch.long)
            return _one_hot(index, present)
        case "none":
            return torch.zeros_like(scores)
    raise AssertionError(f"unhandled strategy kind {strategy.kind!r}")


def _bits_per_byte(bits_per_byte: torch.Tensor | None, strategy: Strategy) -> torch.Tensor:
    """`[B, K]` fp32 bits per byte with NaN read as +inf (no data is the worst value)."""
    if bits_per_byte is None:
        raise ValueError(
            f"strategy {strategy.name!r} needs each teacher's bits_per_byte; pass bits_per_byte="
        )
    return torch.nan_to_num(bits_per_byte.float(), nan=float("inf"))


def _bpb_ranking(
    bits_per_byte: torch.Tensor | None, present: torch.Tensor, strategy: Strategy
) -> torch.Tensor:
    """`[B, K]` higher-is-better key of `min_bpb`: −bpb, with every present teacher (even one of
    infinite bpb) above every absent one, so that the argmax is absent only when all are."""
    key = -_bits_per_byte(bits_per_byte, strategy).clamp_max(torch.finfo(torch.float32).max)
    return key.masked_fill(~present, float("-inf"))


def _one_hot(index: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """`[B]` teacher index -> `[B, K]` fp32 one-hot, zeroed where that teacher is absent."""
    return F.one_hot(index, num_classes=present.shape[-1]).float() * present


def _fresh_gate_weights(
    features: torch.Tensor, present: torch.Tensor, tau: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The released code's gate: drawn anew (default init) on every call, never trained.

    Built on CPU (where `generator` lives), used under no_grad and dropped, so no parameter
    reaches the optimizer or the checkpoint. Kept in fp32: the reference's bf16 gate is a
    separate mistake (docs/design.md §13) that this strategy does not need to reproduce.
    """
    gate = SelectionGate(*features.shape[-2:])  # [B, K, F]: K teachers, F features each
    gate.reset_parameters(generator)
    gate.requires_grad_(False).to(features.device)
    with torch.no_grad():
        return select_teachers(gate(features, present), tau)
