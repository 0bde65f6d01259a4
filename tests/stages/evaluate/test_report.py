import json
from pathlib import Path

from stages.evaluate.paired_delta import MEAN_BPB, PairedDelta, compare_to_references
from stages.evaluate.plots import draw_experiment_figures, plot_paired_deltas
from stages.evaluate.report import (
    SCORES_TITLE,
    comparison_sections,
    delta_frame,
    experiment_markdown,
    render_table,
    results_frame,
    write_report,
)
from stages.evaluate.unit_score import UnitScore


def _bpb(domain: str, bits: list[float]) -> UnitScore:
    obs = {f"{domain}{i}": (b, 100.0) for i, b in enumerate(bits)}
    return UnitScore.from_observations(f"bpb/{domain}", "bpb", False, obs)


MODELS = {
    "target": {"bpb/prose": _bpb("prose", [80, 100, 120]), "bpb/code": _bpb("code", [50, 60, 70])},
    "none": {"bpb/prose": _bpb("prose", [79, 99, 119.5]), "bpb/code": _bpb("code", [50, 60, 70])},
    "adaptive": {"bpb/prose": _bpb("prose", [78, 99, 119]), "bpb/code": _bpb("code", [50.1, 60, 70])},
}


def test_delta_cells_show_delta_paired_se_and_p() -> None:
    deltas = {
        "fused": {
            "bpb/prose": PairedDelta("bpb/prose", -0.0006, 0.0010, 40, -0.6, 0.5485),
            "bpb/code": PairedDelta("bpb/code", 0.0123, 0.0001, 40, 123.0, 0.0),
            MEAN_BPB: PairedDelta(MEAN_BPB, 0.00585, 0.0005, 80, 11.7, 0.0),
        },
        "tiny": {"bpb/code": PairedDelta("bpb/code", 0.5, float("nan"), 1, float("nan"), float("nan"))},
    }
    frame = delta_frame(deltas)
    assert frame.columns == ["model", "bpb/code", "bpb/prose", MEAN_BPB]
    assert frame.row(0) == (
        "fused",
        "+0.0123 ± 0.0001 (p<1e-4)",
        "-0.0006 ± 0.0010 (p=0.55)",
        "+0.0059 ± 0.0005 (p<1e-4)",
    )
    assert frame.row(1) == ("tiny", "+0.5000", "–", "–")


def test_eval_report_has_descriptive_scores_then_paired_tables(tmp_path: Path) -> None:
    comparisons = compare_to_references(MODELS, ["target", "none"])
    sections = comparison_sections(comparisons, "target")
    assert [title.split(" (")[0] for title, _ in sections] == [
        "Paired Δ vs the target `target`",
        "Paired Δ vs `none`",
    ]
    assert sections[1][1]["model"].to_list() == ["target", "adaptive"]
    write_report(tmp_path, {"x": 1}, results_frame(MODELS), ["a note"], sections)
    text = (tmp_path / "eval.md").read_text()
    assert text.index(SCORES_TITLE) < text.index("Paired Δ vs the target") < text.index("Paired Δ vs `none`")
    assert "| adaptive" in text and "mean bpb" in text and text.rstrip().endswith("a note")
    assert json.loads((tmp_path / "eval.json").read_text()) == {"x": 1}
    markdown = experiment_markdown(
        command="polyfuse experiment",
        table=results_frame(MODELS),
        reductions={},
        method="adaptive",
        gate_table=None,
        plots=[],
        comparisons=sections,
    )
    assert markdown.index(SCORES_TITLE) < markdown.index("Paired Δ vs `none`")
    assert "-0.0" in render_table(sections[0][1], by_unit=True)


def test_paired_delta_plot_per_domain_and_mean(tmp_path: Path) -> None:
    vs_none = compare_to_references(MODELS, ["none"])["none"]
    values = {
        name: {u.removeprefix("bpb/"): (d.delta, d.se) for u, d in per.items()}
        for name, per in vs_none.items()
    }
    assert set(values["adaptive"]) == {"prose", "code", MEAN_BPB}
    path = plot_paired_deltas(values, tmp_path / "delta.png", "none")
    assert path.stat().st_size > 1000
    figures = draw_experiment_figures(
        tmp_path / "report",
        {n: {u: (s.value, s.se) for u, s in per.items()} for n, per in MODELS.items()},
        {},
        proposed="adaptive",
        teachers=[],
        fused=["adaptive"],
        deltas_vs_none={"adaptive": values["adaptive"]},
    )
    assert (
        "Paired Δ bits per byte vs none per domain",
        tmp_path / "report" / "bpb_delta_vs_none.png",
    ) in figures
