"""Evaluation results as one table (rows = models, columns = units as `value ± SE`, means, KI):
printed on the terminal, written as markdown, and kept whole in ``eval.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from data_schemas.atomic import atomic_open, write_json_atomic
from stages.evaluate.interference import Interference
from stages.evaluate.unit_score import UnitScore

TABLE_METRICS = ("bpb", "acc", "acc_norm")


def _cell(score: UnitScore | None) -> str:
    if score is None:
        return "–"
    se = "" if math.isnan(score.se) else f" ± {score.se:.3f}"
    return f"{score.value:.3f}{se}"


def results_frame(
    models: Mapping[str, Mapping[str, UnitScore]],
    interference: Mapping[str, Interference] | None = None,
    metrics: Sequence[str] = TABLE_METRICS,
) -> pl.DataFrame:
    """One row per model: every unit of ``metrics`` as a ``value ± SE`` string, the unweighted
    mean per metric over its units, and KI (``k/n`` units) where a target was given."""
    units = sorted(
        {u for scores in models.values() for u, s in scores.items() if s.metric in metrics},
        key=lambda u: (metrics.index(u.split("/")[0]), u),
    )
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


def write_report(directory: Path, payload: Mapping, frame: pl.DataFrame, notes: Sequence[str] = ()) -> None:
    """``eval.json`` (``payload``, every score with its observations) and ``eval.md``."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "eval.json", payload)
    with atomic_open(directory / "eval.md") as f:
        f.write("# Evaluation\n\n" + render_table(frame, markdown=True) + "\n")
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
    notes: Sequence[str] = (),
) -> str:
    """``report.md`` of an experiment: the results table (rows = methods, as the paper's figure),
    the KI reduction of ``method`` against each baseline, what the gate learned, the plots."""
    parts = ["# Fusion experiment", "", f"Reproduce: `{command}`", "", render_table(table, markdown=True), ""]
    if reductions:
        rows = [
            {
                "baseline": b,
                f"1 − KI({method})/KI(baseline)": "undefined (KI = 0)" if r is None else f"{r:.2f}",
            }
            for b, r in reductions.items()
        ]
        parts += [
            "## Knowledge interference reduction",
            "",
            render_table(pl.DataFrame(rows), markdown=True),
            "",
        ]
    if gate_table is not None and gate_table.height:
        parts += [
            "## Mean fusion weight per teacher (train split, final weights)",
            "",
            render_table(gate_table, markdown=True),
            "",
        ]
    for title, file in plots:
        parts += [f"## {title}", "", f"![{title}]({file})", ""]
    parts += [note + "\n" for note in notes]
    return "\n".join(parts)
