"""Knowledge interference (KI): how many evaluation units a fused model lost against the target
before fusion. The paper (arXiv 2505.23844) names it without a definition; ours (docs/design.md §10):

    KI(model) = #{units u : model is worse than the target on u by more than SE_u}

- a unit is a domain's bits per byte or a task's accuracy (one metric per task: see
  ``pick_units``); worse means higher bits per byte, lower accuracy (`UnitScore.higher_is_better`);
- SE_u is the standard error of the difference model − target on u, paired over the shared
  documents / items (`paired_delta`), i.e. "worse beyond what the sampling of evaluation text
  alone would explain"; never the unpaired one, which would hide real losses under the
  difficulty spread both models share;
- reduction against a baseline b: 1 − KI(method) / KI(b); undefined (None) when KI(b) = 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stages.evaluate.paired_delta import paired_delta
from stages.evaluate.unit_score import UnitScore

KI_METRICS = ("bpb", "acc_norm")
"""Metrics that count as evaluation units: bits per byte per domain and length-normalised
accuracy per task (acc and acc_bytes of the same task would count one task two or three times)."""


@dataclass(frozen=True)
class Interference:
    count: int
    """Units on which the model is worse than the target by more than one standard error."""
    worse_units: tuple[str, ...]
    compared_units: int
    """Units both models were scored on."""


def pick_units(scores: Mapping[str, UnitScore], metrics: Iterable[str] = KI_METRICS) -> dict[str, UnitScore]:
    """The scores that are KI units."""
    keep = set(metrics)
    return {unit: s for unit, s in scores.items() if s.metric in keep}


def is_worse(model: UnitScore, target: UnitScore) -> bool:
    """True when ``model`` is worse than ``target`` by more than the paired standard error of the
    difference (False with fewer than two shared observations: no SE to exceed)."""
    paired = paired_delta(model, target)
    worse_by = -paired.delta if model.higher_is_better else paired.delta
    return worse_by > paired.se


def knowledge_interference(
    model: Mapping[str, UnitScore], target: Mapping[str, UnitScore], metrics: Iterable[str] = KI_METRICS
) -> Interference:
    """KI of ``model`` against ``target`` over the units both were scored on."""
    mine, theirs = pick_units(model, metrics), pick_units(target, metrics)
    shared = sorted(mine.keys() & theirs.keys())
    worse = tuple(u for u in shared if is_worse(mine[u], theirs[u]))
    return Interference(len(worse), worse, len(shared))


def interference_reduction(
    counts: Mapping[str, int], method: str, baselines: Iterable[str]
) -> dict[str, float | None]:
    """1 − KI(method) / KI(baseline) per baseline; None where the baseline has KI 0."""
    return {b: (1.0 - counts[method] / counts[b]) if counts[b] else None for b in baselines if b != method}
