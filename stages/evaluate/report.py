"""Evaluation results as tables: one of scores (rows = models, columns = units as `value ± SE`,
means, KI), descriptive of each model alone; and one per reference model of paired differences
(`Δ ± paired SE (p)`), the only way two models are compared. Printed on the terminal, written as
markdown, and kept whole in ``eval.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from data_schemas.atomic import atomic_open, write_json_atomic
from stages.evaluate.interference import Interference
from stages.evaluate.paired_delta import MEAN_BPB, PairedDelta
from stages.evaluate.unit_score import UnitScore

TABLE_METRICS = ("bpb", "acc", "acc_norm")


def _cell(score: UnitScore | None) -> str:
    if score is None:
        return "–"
    se = "" if math.isnan(score.se) else f" ± {score.se:.3f}"
    return f"{score.value:.3f}{se}"


def _ordered_units(units: set[str], metrics: Sequence[str]) -> list[str]:
    """Units of ``metrics`` in table order: by metric, then by name."""
    metrics = list(metrics)
    keep = [u for u in units if u.split("/")[0] in metrics]
    return sorted(keep, key=lambda u: (metrics.index(u.split("/")[0]), u))


def _delta_cell(delta: PairedDelta | None) -> str:
    # Four decimals: method differences of a few 1e-4 bits per byte are what is being told apart.
    if delta is None:
        return "–"
    if math.isnan(delta.se):
        return f"{delta.delta:+.4f}"
    p = "p<1e-4" if delta.p_value < 1e-4 else f"p={delta.p_value:.2g}"
    return f"{delta.delta:+.4f} ± {delta.se:.4f} ({p})"


def results_frame(
    models: Mapping[str, Mapping[str, UnitScore]],
    interference: Mapping[str, Interference] | None = None,
    metrics: Sequence[str] = TABLE_METRICS,
) -> pl.DataFrame:
    """One row per model: every unit of ``metrics`` as a ``value ± SE`` string, the unweighted
    mean per metric over its units, and KI (``k/n`` units) where a target was given."""
    units = _ordered_units({u for scores in models.values() for u in scores}, metrics)
    rows = []
    for name, scores in models.items():
        row = {"model": name}
        row.update({unit: _cell(scores.get(unit)) for unit in units})
        for metric in metrics:
            values = [s.value for s in scores.values() if s.metric == metric]
            if values:
                row[f"mean {metric}"] = f"{sum(values) / len(values):.3f}"
        if interference is not None:
            ki = interference.get(name)
            row["KI"] = f"{ki.count}/{ki.compared_units}" if ki else "target"
        rows.append(row)
    return pl.DataFrame(rows)


def delta_frame(
    deltas: Mapping[str, Mapping[str, PairedDelta]], metrics: Sequence[str] = TABLE_METRICS
) -> pl.DataFrame:
    """One row per model: ``Δ ± paired SE (p)`` against one reference on every unit of
    ``metrics``, then the mean over domains (``deltas``: model → unit → `PairedDelta`, as
    `compare_to_references` gives per reference)."""
    units = _ordered_units({u for per in deltas.values() for u in per}, metrics)
    if "bpb" in metrics and any(MEAN_BPB in per for per in deltas.values()):
        units.append(MEAN_BPB)
    rows = [{"model": name, **{u: _delta_cell(per.get(u)) for u in units}} for name, per in deltas.items()]
    return pl.DataFrame(rows)


def comparison_sections(
    comparisons: Mapping[str, Mapping[str, Mapping[str, PairedDelta]]],
    target: str | None,
    metrics: Sequence[str] = TABLE_METRICS,
) -> list[tuple[str, pl.DataFrame]]:
    """(title, `delta_frame`) per reference of ``comparisons`` (reference → model → unit →
    `PairedDelta`, as `compare_to_references` gives), the target's titled as such."""
    sections = []
    for reference, deltas in comparisons.items():
        if not deltas:
            continue
        who = f"the target `{reference}`" if reference == target else f"`{reference}`"
        title = (
            f"Paired Δ vs {who} (model − {reference} ± paired SE, two-sided p; "
            "bpb: negative is better, acc: positive is better)"
        )
        sections.append((title, delta_frame(deltas, metrics)))
    return sections


def render_table(frame: pl.DataFrame, *, markdown: bool = False, by_unit: bool = False) -> str:
    """The frame as text: polars' terminal table, or a GitHub markdown table. ``by_unit`` turns it
    to one row per unit and one column per model, which fits a terminal."""
    if by_unit:
        frame = frame.transpose(include_header=True, header_name="unit", column_names="model")
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=400,
        fmt_str_lengths=80,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_formatting="MARKDOWN" if markdown else "UTF8_FULL_CONDENSED",
    ):
        return str(frame)


SCORES_TITLE = "Scores (descriptive: each model alone, ± its unpaired standard error)"


def markdown_sections(sections: Sequence[tuple[str, pl.DataFrame]]) -> list[str]:
    """``## title``, then the table, per (title, frame)."""
    parts = []
    for title, frame in sections:
        parts += [f"## {title}", "", render_table(frame, markdown=True), ""]
    return parts


def write_report(
    directory: Path,
    payload: Mapping,
    frame: pl.DataFrame,
    notes: Sequence[str] = (),
    comparisons: Sequence[tuple[str, pl.DataFrame]] = (),
) -> None:
    """``eval.json`` (``payload``, every score with its observations) and ``eval.md``: the scores
    table, then each (title, `delta_frame`) of ``comparisons``, then the notes."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "eval.json", payload)
    parts = ["# Evaluation", "", *markdown_sections([(SCORES_TITLE, frame), *comparisons])]
    with atomic_open(directory / "eval.md") as f:
        f.write("\n".join(parts))
        for note in notes:
            f.write(f"\n{note}\n")


def experiment_markdown(
    *,
    command: str,
    table: pl.DataFrame,
    reductions: Mapping[str, float | None],
    method: str,
    gate_table: pl.DataFrame | None,
    plots: Sequence[tuple[str, str]],
    comparisons: Sequence[tuple[str, pl.DataFrame]] = (),
    notes: Sequence[str] = (),
    diagnostics: Sequence[tuple[str, pl.DataFrame]] = (),
) -> str:
    """``report.md`` of an experiment: the results table (rows = methods, as the paper's figure),
    each (title, `delta_frame`) of ``comparisons`` (paired Δ against the target, against `none`),
    the KI reduction of ``method`` against each baseline, what the gate learned and each
    (title, frame) of ``diagnostics`` (the gate against its oracles), the plots."""
    parts = ["# Fusion experiment", "", f"Reproduce: `{command}`", ""]
    parts += markdown_sections([(SCORES_TITLE, table), *comparisons])
    if reductions:
        rows = [
            {
                "baseline": b,
                f"1 − KI({method})/KI(baseline)": "undefined (KI = 0)" if r is None else f"{r:.2f}",
            }
            for b, r in reductions.items()
        ]
        parts += markdown_sections([("Knowledge interference reduction", pl.DataFrame(rows))])
    if gate_table is not None and gate_table.height:
        parts += markdown_sections(
            [("Mean fusion weight per teacher (train split, final weights)", gate_table)]
        )
    parts += markdown_sections([(title, frame) for title, frame in diagnostics if frame.height])
    for title, file in plots:
        parts += [f"## {title}", "", f"![{title}]({file})", ""]
    parts += [note + "\n" for note in notes]
    return "\n".join(parts)
