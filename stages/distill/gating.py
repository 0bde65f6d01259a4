"""The teacher-selection gate and the threshold selection of docs/design.md §6.

    g_b    = softmax(MLP(x_b)) over the teachers present for sample b, x_b = the [K, F] teacher
             features (F = 1: the score r_b, default exp(−ce); F = 4 with `gate_features: all`)
    m_bk   = 1[g_bk > tau], at least argmax_k g_bk kept
    w_bk   = g_bk m_bk / (sum_k g_bk m_bk + 1e-8)

The gate is a persistent module: it lives inside the module DeepSpeed wraps, is trained (by
the feedback loss and, by default, the fusion loss through w) and is saved in checkpoints.
The released reference code re-created it every step and ran it in bf16 (docs/design.md §13); here
the maths is fp32 whatever the student's dtype, and only the `random_gate` strategy builds a
fresh untrained gate on purpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SELECTION_EPS = 1e-8
"""The 1e-8 of docs/design.md §6 in w = g·m / (Σ g·m + 1e-8); keeps an all-zero row at 0, not NaN."""


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `mask`; masked entries and all-masked rows get 0.

    Args:
        logits: `[B, K]` float.
        mask: `[B, K]` bool, true where the entry takes part.

    Returns:
        `[B, K]` probabilities in the dtype of `logits`; each row sums to 1, or to 0 when the
        row's mask is all false.
    """
    # The most negative finite value, not -inf: an all-masked row then softmaxes to a finite
    # uniform row (zeroed below) instead of NaN, so no NaN reaches the gradients either.
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


class SelectionGate(nn.Module):
    """Per-sample teacher gate: `Linear(K·F,2K) -> GELU -> Linear(2K,K) -> GELU -> Linear(K,K)`.

    The input is F features per teacher, flattened teacher by teacher; with F = 1 (the default,
    one score per teacher such as exp(−ce)) this is the paper's `Linear(K,2K)` first layer and
    the parameters have the same shapes as a one-feature gate always had. A teacher missing for a
    sample is fed as 0 in every feature (the worst a score in [0, 1] can be) and gets gate
    probability 0.
    """

    def __init__(self, num_teachers: int, num_features: int = 1) -> None:
        super().__init__()
        if num_teachers < 1:
            raise ValueError(f"the gate needs at least one teacher, got num_teachers={num_teachers}")
        if num_features < 1:
            raise ValueError(
                f"the gate needs at least one feature per teacher, got num_features={num_features}"
            )
        self.num_teachers = num_teachers
        self.num_features = num_features
        k = num_teachers
        # PyTorch default init (nn.Linear.reset_parameters), fp32.
        self.layers = nn.ModuleList(
            [
                nn.Linear(k * num_features, 2 * k, dtype=torch.float32),
                nn.Linear(2 * k, k, dtype=torch.float32),
                nn.Linear(k, k, dtype=torch.float32),
            ]
        )

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw every weight exactly as `nn.Linear.reset_parameters` does, from `generator`.

        The same distribution as PyTorch's default init, made reproducible without touching the
        global RNG (the `random_gate` strategy draws a fresh gate per step from its own generator).
        """
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def forward(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Gate probabilities over the present teachers.

        Args:
            features: `[B, K, F]` per-sample teacher features, higher is better, or `[B, K]`
                when F = 1; any dtype, any value (even NaN) where the teacher is absent.
            present: `[B, K]` bool, false where teacher k has no data for sample b.

        Returns:
            `[B, K]` fp32 gate probabilities g; rows sum to 1 over present teachers, absent
            teachers get exactly 0, a sample with no teacher gets an all-zero row.
        """
        if features.dim() == 2:
            features = features.unsqueeze(-1)
        if tuple(features.shape[-2:]) != (self.num_teachers, self.num_features):
            raise ValueError(
                f"features must have one column per teacher ({self.num_teachers}) with "
                f"{self.num_features} feature(s) each, got shape {tuple(features.shape)}: check the "
                "teacher list and distill.gate_features of the run"
            )
        x = torch.where(present.unsqueeze(-1), features.float(), 0.0).flatten(-2)
        # fp32 even inside a bf16 autocast region or if a wrapper cast the parameters down
        # (docs/design.md §13: rewards and gate in bf16 is a mistake); .float() is free when fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            for i, layer in enumerate(self.layers):
                x = F.linear(x, layer.weight.float(), layer.bias.float())
                if i < len(self.layers) - 1:
                    x = F.gelu(x)
        return masked_softmax(x, present)


def select_teachers(gate: torch.Tensor, tau: float) -> torch.Tensor:
    """Threshold selection: keep teachers with g > tau (at least the argmax), renormalise.

    Args:
        gate: `[B, K]` gate probabilities g (0 for absent teachers).
        tau: threshold (`distill.tau`, default 0.15).

    Returns:
        `[B, K]` fp32 weights w = g·m / (Σ g·m + 1e-8). Rows sum to 1 (up to the 1e-8), an
        all-zero gate row gives an all-zero weight row. Differentiable in g; m is not.
    """
    g = gate.float()
    keep = g > tau
    # At least the argmax: with K large or a flat gate every g may sit below tau.
    keep = keep | F.one_hot(g.argmax(dim=-1), num_classes=g.shape[-1]).bool()
    kept = g * keep
    return kept / (kept.sum(dim=-1, keepdim=True) + SELECTION_EPS)
