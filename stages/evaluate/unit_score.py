"""One evaluation unit's score (a domain's bits per byte, a task's accuracy) with its standard
error and the per-observation data that paired comparisons of two models need (paired_delta.py).

Every metric here is a ratio of sums over independent observations, R = Σ yᵢ / Σ xᵢ:
- bits per byte: yᵢ = bits of document i's scored tokens, xᵢ = UTF-8 bytes they cover (the
  byte-weighted mean of per-sample bits per byte). Chunks of one document share style and topic,
  so the document, not the chunk, is the independent observation (the held-out split is by
  document too);
- accuracy: yᵢ = 1 if item i is answered right else 0, xᵢ = 1.

Standard error: the linearised (delta-method) variance of a ratio estimator,

    SE(R)² = n / (n − 1) · Σᵢ ((yᵢ − R xᵢ) / Σⱼ xⱼ)²,

which for xᵢ = 1 is exactly lm-evaluation-harness's `mean_stderr` (sample standard deviation
with n − 1, over √n). It describes one model's sampling error. Two models scored on the same
observations are compared per observation (paired_delta.py), which removes the difficulty both
share and gives a far smaller standard error than the unpaired √(SEᵃ² + SEᵇ²).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class UnitScore:
    """A model's score on one evaluation unit."""

    unit: str
    """Unit name, ``metric/where``: e.g. ``bpb/prose``, ``acc_norm/cloze_code``."""
    metric: str
    """``bpb``, ``acc``, ``acc_norm`` or ``acc_bytes``."""
    higher_is_better: bool
    value: float
    se: float
    """Descriptive standard error of this model alone (NaN with fewer than two observations); a
    difference between two models has the paired one of `paired_delta`."""
    n: int
    """Independent observations (documents for bpb, items for accuracy)."""
    observations: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    """Observation key → (y, x): numerator and denominator of the ratio. Kept in the cached score
    records so that paired deltas can be recomputed from them."""

    @classmethod
    def from_observations(
        cls, unit: str, metric: str, higher_is_better: bool, observations: Mapping[str, tuple[float, float]]
    ) -> UnitScore:
        keys = sorted(observations)
        y = np.array([observations[k][0] for k in keys], dtype=np.float64)
        x = np.array([observations[k][1] for k in keys], dtype=np.float64)
        value, se = ratio_estimate(y, x)
        obs = {k: (float(a), float(b)) for k, a, b in zip(keys, y, x)}
        return cls(unit, metric, higher_is_better, value, se, len(keys), obs)

    def to_dict(self, with_observations: bool = True) -> dict:
        out = {
            "unit": self.unit,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "value": self.value,
            "se": self.se,
            "n": self.n,
        }
        if with_observations:
            out["observations"] = {k: list(v) for k, v in self.observations.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> UnitScore:
        obs = {k: (float(v[0]), float(v[1])) for k, v in data.get("observations", {}).items()}
        return cls(
            data["unit"], data["metric"], data["higher_is_better"], data["value"], data["se"], data["n"], obs
        )


def ratio_estimate(y: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(Σy / Σx, its delta-method standard error); see the module docstring."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n = len(y)
    if n == 0 or x.sum() <= 0:
        return math.nan, math.nan
    ratio = float(y.sum() / x.sum())
    if n < 2:
        return ratio, math.nan
    residuals = (y - ratio * x) / x.sum()
    return ratio, float(math.sqrt(n / (n - 1) * np.sum(residuals**2)))
