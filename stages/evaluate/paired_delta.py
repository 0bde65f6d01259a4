"""Paired comparison of two models on one evaluation unit: the difference a − b, its standard error
over the shared observations, and a test of a = b.

Both models were scored on the same observations (documents for bits per byte, items for
accuracy; unit_score.py), so a document that is hard for one is hard for the other. Comparing
per observation removes that shared difficulty; the unpaired √(SEᵃ² + SEᵇ²) keeps it and is
10–100× larger on held-out bits per byte. Unpaired errors describe one model (`UnitScore.se`);
every comparison of two goes through here (docs/design.md §10).

For a ratio estimator R = Σᵢ yᵢ / Σᵢ xᵢ, the linearised residual of observation i is
rᵢ = (yᵢ − R xᵢ) / Σⱼ xⱼ (R − R_true ≈ Σᵢ rᵢ). Per observation, the difference of the two
models' residuals is dᵢ = rᵢᵃ − rᵢᵇ (each model with its own y and x: models with different
tokenizers predict slightly different byte spans of the same document), and

    Δ = Rᵃ − Rᵇ,    SE(Δ)² = n / (n − 1) · Σᵢ dᵢ²    (n − 1: the two ratios are estimated),
    z = Δ / SE(Δ),  p = erfc(|z| / √2)               (two-sided, normal reference).

This is a paired z-test on the linearised ratio-estimator residuals. With xᵢ = 1 (accuracy) dᵢ is
the centred per-item difference of correctness and SE(Δ) the usual paired standard error. The
normal reference is asymptotic: with a handful of documents per domain p is optimistic.

Several units whose observations are disjoint (domains hold disjoint documents) are independent,
so the mean of their deltas has SE = √(Σ_d SE_d²) / D (`mean_over_domains`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.evaluate.unit_score import UnitScore

TEST = "two-sided paired z-test on the linearised ratio-estimator residuals (n − 1 correction)"
"""The test behind every `PairedDelta.p_value`, as written into eval.json and results.json."""
MEAN_BPB = "mean bpb"
"""Unit name of the mean over domains of the per-domain bits-per-byte deltas."""


@dataclass(frozen=True)
class PairedDelta:
    """Model a − model b on one unit, paired over the observations both were scored on."""

    unit: str
    """``metric/where`` as in `UnitScore.unit`, or `MEAN_BPB`."""
    delta: float
    """a − b. Bits per byte: negative means a is better; accuracy: positive means a is better."""
    se: float
    """Paired standard error of delta (NaN with fewer than two observations)."""
    n: int
    """Paired observations (summed over domains for `MEAN_BPB`)."""
    z: float
    """delta / se (0 when both are 0; ±inf when only se is)."""
    p_value: float
    """Two-sided p-value of a = b under `TEST`."""

    def to_dict(self) -> dict:
        return {
            "unit": self.unit,
            "delta": self.delta,
            "se": self.se,
            "n": self.n,
            "z": self.z,
            "p_value": self.p_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PairedDelta:
        return cls(data["unit"], data["delta"], data["se"], data["n"], data["z"], data["p_value"])


def z_test(delta: float, se: float) -> tuple[float, float]:
    """(z, two-sided p) of ``delta`` with standard error ``se``, normal reference."""
    if math.isnan(se) or math.isnan(delta):
        return math.nan, math.nan
    if se == 0.0:
        # No per-observation disagreement: identical models (delta 0) or an exact constant shift.
        return (0.0, 1.0) if delta == 0.0 else (math.copysign(math.inf, delta), 0.0)
    z = delta / se
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def _ratio_and_residuals(score: UnitScore, keys: Sequence[str]) -> tuple[float, np.ndarray]:
    y = np.array([score.observations[k][0] for k in keys], dtype=np.float64)
    x = np.array([score.observations[k][1] for k in keys], dtype=np.float64)
    total = x.sum()
    if total <= 0:
        raise ValueError(f"{score.unit}: the denominators of the shared observations sum to {total}, not > 0")
    ratio = float(y.sum() / total)
    return ratio, (y - ratio * x) / total


def paired_delta(a: UnitScore, b: UnitScore) -> PairedDelta:
    """a − b on their unit, with the paired standard error and z-test of the module docstring.

    Paired over the observation keys both carry; when those differ (a document whose predicted
    span is empty under one tokenizer), both ratios are recomputed on the shared ones, so delta
    can differ slightly from ``a.value − b.value``. Identical scores give delta = se = 0 exactly.
    """
    if a.unit != b.unit:
        raise ValueError(f"a paired comparison is of one unit, got {a.unit} and {b.unit}")
    for score in (a, b):
        if not score.observations:
            raise ValueError(
                f"{score.unit} carries no per-observation data, which a paired comparison needs: load "
                "the scores from cache/eval/<key>/<fingerprint>.json or eval.json (results.json drops them)"
            )
    keys = sorted(a.observations.keys() & b.observations.keys())
    if not keys:
        raise ValueError(
            f"{a.unit}: the two scores share no observation: score both models on the same split"
        )
    ratio_a, residuals_a = _ratio_and_residuals(a, keys)
    ratio_b, residuals_b = _ratio_and_residuals(b, keys)
    delta, n = ratio_a - ratio_b, len(keys)
    se = math.sqrt(n / (n - 1) * float(np.sum((residuals_a - residuals_b) ** 2))) if n >= 2 else math.nan
    return PairedDelta(a.unit, delta, se, n, *z_test(delta, se))


def mean_over_domains(deltas: Sequence[PairedDelta], unit: str = MEAN_BPB) -> PairedDelta:
    """The unweighted mean of per-domain deltas, SE = √(Σ_d SE_d²) / D.

    Valid only for units with disjoint observations (domains: each document is in one domain), so
    that the per-domain deltas are independent; not for tasks built from the same documents."""
    if not deltas:
        raise ValueError("mean_over_domains needs at least one per-domain delta")
    count = len(deltas)
    delta = sum(d.delta for d in deltas) / count
    se = math.sqrt(sum(d.se**2 for d in deltas)) / count
    return PairedDelta(unit, delta, se, sum(d.n for d in deltas), *z_test(delta, se))


def compare_models(
    model: Mapping[str, UnitScore], reference: Mapping[str, UnitScore], metrics: Iterable[str] = ("bpb",)
) -> dict[str, PairedDelta]:
    """model − reference on every unit of ``metrics`` both were scored on, in unit order, then
    `MEAN_BPB` (`mean_over_domains` of the ``bpb/*`` deltas) when bits per byte is among them."""
    keep = set(metrics)
    shared = sorted(u for u in model.keys() & reference.keys() if model[u].metric in keep)
    deltas = {u: paired_delta(model[u], reference[u]) for u in shared}
    per_domain = [d for u, d in deltas.items() if model[u].metric == "bpb"]
    if per_domain:
        deltas[MEAN_BPB] = mean_over_domains(per_domain)
    return deltas


def compare_to_references(
    models: Mapping[str, Mapping[str, UnitScore]],
    references: Iterable[str],
    metrics: Iterable[str] = ("bpb",),
) -> dict[str, dict[str, dict[str, PairedDelta]]]:
    """reference → model → unit → `PairedDelta` (model − reference) for every other model."""
    metrics = tuple(metrics)
    return {
        ref: {
            name: compare_models(scores, models[ref], metrics)
            for name, scores in models.items()
            if name != ref
        }
        for ref in references
    }


def comparisons_to_dict(comparisons: Mapping[str, Mapping[str, Mapping[str, PairedDelta]]]) -> dict:
    """`compare_to_references`'s result as JSON: the test, then reference → model → unit → delta."""
    return {
        "test": TEST,
        "against": {
            ref: {name: {u: d.to_dict() for u, d in per.items()} for name, per in deltas.items()}
            for ref, deltas in comparisons.items()
        },
    }


def load_unit_scores(source: str | Path | Mapping) -> dict[str, UnitScore]:
    """Unit → `UnitScore` from a cached score record: a path to cache/eval/<key>/<fingerprint>.json,
    the loaded record (``{"facts", "scores"}``) or an eval.json model entry (both carry ``scores``),
    or a mapping unit → `UnitScore` or its ``to_dict()``."""
    if isinstance(source, str | Path):
        source = json.loads(Path(source).read_text())
    scores = source.get("scores", source)
    return {u: s if isinstance(s, UnitScore) else UnitScore.from_dict(s) for u, s in scores.items()}


def compare_score_records(
    a: str | Path | Mapping, b: str | Path | Mapping, metrics: Iterable[str] = ("bpb",)
) -> dict[str, PairedDelta]:
    """Per-domain and mean-over-domains Δ = a − b ± paired SE between two models, from their score
    records in any form `load_unit_scores` reads, e.g.

        compare_score_records("cache/eval/KEY/FP_A.json", "cache/eval/KEY/FP_B.json")["mean bpb"]

    Both records must come from the same evaluation key (same held-out split and settings)."""
    return compare_models(load_unit_scores(a), load_unit_scores(b), metrics)
