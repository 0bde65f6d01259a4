"""What a distill run learned, for the experiment report: curves from its `metrics.jsonl` records
(stages/distill/metrics.py: one record per log window with `step`, `loss/*`, `gate/mean_w/NAME`,
`gate/selected_hist` …) and the fusion weights its strategy gives each teacher per domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def metric_series(records: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the log windows that hold it."""
    pairs = [(float(r["step"]), float(r[key])) for r in records if key in r and r[key] is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def selected_counts(records: Sequence[Mapping]) -> list[int]:
    """Samples with 0, 1, …, K teachers selected, summed over every log window."""
    hists = [
        np.asarray(r["gate/selected_hist"], dtype=np.int64) for r in records if "gate/selected_hist" in r
    ]
    return np.sum(hists, axis=0).tolist() if hists else []


def domain_weights(
    domains: Sequence[str], weights: np.ndarray, teacher_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean fusion weight w per teacher, per domain and over all samples (``all``).

    weights: `[N, K]` per-sample weights (rows sum to 1; all-zero where no teacher is present,
    and such samples are left out of the means).
    """
    weights = np.asarray(weights, dtype=np.float64)
    fused = weights.sum(axis=1) > 0
    labels = np.asarray(domains)
    out = {}
    for domain in [*sorted(set(domains)), "all"]:
        rows = fused & ((labels == domain) if domain != "all" else True)
        if rows.any():
            means = weights[rows].mean(axis=0)
            out[domain] = {name: float(w) for name, w in zip(teacher_names, means)}
    return out
