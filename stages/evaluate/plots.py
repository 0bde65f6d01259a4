"""The experiment's PNG plots (matplotlib, no display needed): per-domain bits per byte, paired
deltas against a reference, gate weight per teacher over training, the selected-teacher-count
histogram, and loss curves. Each function takes plain numbers and a path, so the report decides
what to draw."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training box
import matplotlib.pyplot as plt

from stages.evaluate.paired_delta import MEAN_BPB

Series = tuple[Sequence[float], Sequence[float]]
"""(x values, y values)."""


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_domain_bars(
    values: Mapping[str, Mapping[str, tuple[float, float]]],
    path: Path,
    ylabel: str = "bits per byte (lower is better)",
    *,
    groups: Sequence[str] | None = None,
    zero_line: bool = False,
) -> Path:
    """Grouped bars: one group per domain, one bar per model, ± standard error.

    values: model → domain → (value, standard error). groups: the domains in plot order (default:
    sorted). zero_line: draw y = 0, for differences.
    """
    models = list(values)
    domains = list(groups) if groups is not None else sorted({d for per in values.values() for d in per})
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(domains) * max(len(models), 1) * 0.35 + 3), 4))
    for i, model in enumerate(models):
        xs = [d + (i - (len(models) - 1) / 2) * width for d in range(len(domains))]
        ys = [values[model].get(dom, (float("nan"), 0.0))[0] for dom in domains]
        errs = [values[model].get(dom, (0.0, 0.0))[1] for dom in domains]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=model)
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_paired_deltas(
    deltas: Mapping[str, Mapping[str, tuple[float, float]]], path: Path, reference: str
) -> Path:
    """Bars of Δ bits per byte (model − ``reference``) per domain, ± one paired standard error,
    with the mean over domains last.

    deltas: model → domain (or the mean's label, kept last) → (Δ, paired SE).
    """
    mean = "mean over domains"
    values = {m: {mean if d == MEAN_BPB else d: v for d, v in per.items()} for m, per in deltas.items()}
    domains = sorted({d for per in values.values() for d in per} - {mean})
    groups = domains + ([mean] if any(mean in per for per in values.values()) else [])
    ylabel = f"Δ bits per byte vs {reference} (± paired SE; < 0: better)"
    return plot_domain_bars(values, path, ylabel, groups=groups, zero_line=True)


def plot_series(
    series: Mapping[str, Series], path: Path, *, title: str, xlabel: str = "optimizer step", ylabel: str
) -> Path:
    """One line per named series (gate weight per teacher, loss per method…)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=2, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_selected_counts(counts: Mapping[str, Sequence[int]], path: Path) -> Path:
    """Bars of how many samples had 0, 1, …, K teachers selected, one group per method."""
    methods = list(counts)
    k = max((len(c) for c in counts.values()), default=1)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(methods):
        total = sum(counts[method]) or 1
        xs = [n + (i - (len(methods) - 1) / 2) * width for n in range(len(counts[method]))]
        ax.bar(xs, [c / total for c in counts[method]], width, label=method)
    ax.set_xticks(range(k), [str(n) for n in range(k)])
    ax.set_xlabel("teachers selected per sample")
    ax.set_ylabel("fraction of samples")
    if methods:
        ax.legend(fontsize="small")
    return _save(fig, path)


def draw_experiment_figures(
    directory: Path,
    bpb: Mapping[str, Mapping[str, tuple[float, float]]],
    logs: Mapping[str, Sequence[Mapping]],
    *,
    proposed: str,
    teachers: Sequence[str],
    fused: Sequence[str],
    deltas_vs_none: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> list[tuple[str, Path]]:
    """The experiment's figures as (title, file): per-domain bpb bars of every model, the paired
    Δ bpb of every method against `none` (``deltas_vs_none``: method → domain → (Δ, paired SE),
    when given), the proposed method's gate weight per teacher over training, the selected-count
    histogram of the fusing methods, and every method's loss curve (``logs``: method →
    metrics.jsonl records)."""
    from stages.evaluate.training_summary import metric_series, selected_counts

    figures = [("Held-out bits per byte per domain", plot_domain_bars(bpb, directory / "bpb_by_domain.png"))]
    if deltas_vs_none:
        path = plot_paired_deltas(deltas_vs_none, directory / "bpb_delta_vs_none.png", "none")
        figures.append(("Paired Δ bits per byte vs none per domain", path))
    if proposed in logs:
        weights = {t: metric_series(logs[proposed], f"gate/mean_w/{t}") for t in teachers}
        path = plot_series(weights, directory / "gate_weights.png", title=proposed, ylabel="mean weight w")
        figures.append((f"Gate weight per teacher over training ({proposed})", path))
    hists = {name: selected_counts(logs[name]) for name in fused if name in logs}
    hists = {name: h for name, h in hists.items() if h}
    if hists:
        figures.append(
            ("Teachers selected per sample", plot_selected_counts(hists, directory / "selected.png"))
        )
    losses = {name: metric_series(records, "loss/total") for name, records in logs.items()}
    path = plot_series(losses, directory / "loss.png", title="total loss", ylabel="loss")
    figures.append(("Training loss", path))
    return figures
