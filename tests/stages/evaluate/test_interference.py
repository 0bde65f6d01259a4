import pytest

from stages.evaluate.interference import interference_reduction, is_worse, knowledge_interference
from stages.evaluate.report import render_table, results_frame
from stages.evaluate.unit_score import UnitScore


def _bpb(domain: str, per_doc_bits: list[float]) -> UnitScore:
    obs = {f"d{i}": (bits, 100.0) for i, bits in enumerate(per_doc_bits)}
    return UnitScore.from_observations(f"bpb/{domain}", "bpb", False, obs)


def _acc(task: str, correct: list[int], metric: str = "acc_norm") -> UnitScore:
    obs = {f"i{i}": (float(c), 1.0) for i, c in enumerate(correct)}
    return UnitScore.from_observations(f"{metric}/{task}", metric, True, obs)


TARGET = {
    "bpb/prose": _bpb("prose", [80, 100, 120, 90]),
    "bpb/code": _bpb("code", [50, 60, 70, 40]),
    "acc_norm/cloze": _acc("cloze", [1, 0, 1, 1, 0, 1, 0, 1]),
    "acc/cloze": _acc("cloze", [1, 0, 1, 1, 0, 1, 0, 1], "acc"),
}


def test_counts_units_worse_beyond_the_standard_error() -> None:
    fused = {
        # Consistently worse on every document: worse beyond the paired SE.
        "bpb/prose": _bpb("prose", [85, 104, 126, 95]),
        # Better: never counts, however large the gap.
        "bpb/code": _bpb("code", [30, 40, 50, 20]),
        # One item lost of eight: within the SE of the difference.
        "acc_norm/cloze": _acc("cloze", [1, 0, 1, 1, 0, 1, 0, 0]),
        # acc is not a KI metric (acc_norm already counts the task).
        "acc/cloze": _acc("cloze", [0, 0, 0, 0, 0, 0, 0, 0], "acc"),
    }
    ki = knowledge_interference(fused, TARGET)
    assert ki.count == 1 and ki.worse_units == ("bpb/prose",) and ki.compared_units == 3
    assert knowledge_interference(TARGET, TARGET).count == 0


def test_accuracy_direction_and_many_losses() -> None:
    lost = _acc("cloze", [0, 0, 0, 1, 0, 0, 0, 0])
    assert is_worse(lost, TARGET["acc_norm/cloze"])
    assert not is_worse(TARGET["acc_norm/cloze"], lost), "higher accuracy is better"
    noisy = _bpb("prose", [60, 140, 80, 130])  # higher mean, but document to document it flips
    assert noisy.value > TARGET["bpb/prose"].value and not is_worse(noisy, TARGET["bpb/prose"])


def test_reduction_against_baselines() -> None:
    counts = {"adaptive": 1, "min_ce": 4, "avg_ce": 2, "none": 0}
    assert interference_reduction(counts, "adaptive", ["min_ce", "avg_ce", "none"]) == {
        "min_ce": pytest.approx(0.75),
        "avg_ce": pytest.approx(0.5),
        "none": None,
    }


def test_results_table_has_a_column_per_unit_and_ki() -> None:
    fused = {**TARGET, "bpb/prose": _bpb("prose", [85, 104, 126, 95])}
    frame = results_frame(
        {"target": TARGET, "fused": fused}, {"fused": knowledge_interference(fused, TARGET)}
    )
    assert frame.columns == [
        "model",
        "bpb/code",
        "bpb/prose",
        "acc/cloze",
        "acc_norm/cloze",
        "mean bpb",
        "mean acc",
        "mean acc_norm",
        "KI",
    ]
    assert frame["KI"].to_list() == ["target", "1/3"]
    markdown = render_table(frame, markdown=True)
    assert markdown.splitlines()[0].startswith("| model") and "0.975 ± " in markdown
    by_unit = render_table(frame, by_unit=True)
    assert "unit" in by_unit.splitlines()[1] and "fused" in by_unit.splitlines()[1]
    assert any(line.lstrip("│ ").startswith("KI") for line in by_unit.splitlines())
