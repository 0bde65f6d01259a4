import json
import math
import statistics
from pathlib import Path

import pytest

from stages.evaluate.paired_delta import (
    MEAN_BPB,
    PairedDelta,
    compare_models,
    compare_score_records,
    compare_to_references,
    comparisons_to_dict,
    load_unit_scores,
    mean_over_domains,
    paired_delta,
    z_test,
)
from stages.evaluate.unit_score import UnitScore


def _bpb(domain: str, observations: dict[str, tuple[float, float]]) -> UnitScore:
    return UnitScore.from_observations(f"bpb/{domain}", "bpb", False, observations)


def _acc(task: str, correct: list[int]) -> UnitScore:
    obs = {f"i{i}": (float(c), 1.0) for i, c in enumerate(correct)}
    return UnitScore.from_observations(f"acc_norm/{task}", "acc_norm", True, obs)


# Three documents of 10, 20 and 10 bytes; bits per document of two models.
A = _bpb("prose", {"d1": (10.0, 10.0), "d2": (30.0, 20.0), "d3": (20.0, 10.0)})
B = _bpb("prose", {"d1": (12.0, 10.0), "d2": (32.0, 20.0), "d3": (20.0, 10.0)})


def test_paired_se_by_hand() -> None:
    # R_a = 60/40 = 1.5, residuals (y − 1.5 x)/40 = (−5, 0, 5)/40 = (−0.125, 0, 0.125)
    # R_b = 64/40 = 1.6, residuals (y − 1.6 x)/40 = (−4, 0, 4)/40 = (−0.100, 0, 0.100)
    # d = (−0.025, 0, 0.025); SE² = 3/2 · (0.025² + 0 + 0.025²) = 0.001875; SE = 0.0433013
    # z = −0.1 / 0.0433013 = −2.3094; p = erfc(2.3094 / √2) = 0.020921
    d = paired_delta(A, B)
    assert d.unit == "bpb/prose" and d.n == 3
    assert d.delta == pytest.approx(-0.1)
    assert d.se == pytest.approx(0.04330127, rel=1e-6)
    assert d.z == pytest.approx(-2.3094011, rel=1e-6)
    assert d.p_value == pytest.approx(0.02092134, rel=1e-5)
    # Unpaired, the shared spread between documents would swamp it.
    assert math.hypot(A.se, B.se) > 3 * d.se
    swapped = paired_delta(B, A)
    assert (swapped.delta, swapped.se, swapped.p_value) == pytest.approx((0.1, d.se, d.p_value))


def test_identical_models_give_exactly_zero() -> None:
    for score in (A, _acc("cloze", [1, 0, 1, 1, 0])):
        d = paired_delta(score, score)
        assert (d.delta, d.se, d.z, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    copy = UnitScore.from_dict(json.loads(json.dumps(A.to_dict())))  # as read back from the cache
    same = compare_models({"bpb/prose": A, "bpb/code": B}, {"bpb/prose": copy, "bpb/code": B})
    assert all(d.delta == 0.0 and d.se == 0.0 for d in same.values()) and MEAN_BPB in same


def test_accuracy_se_is_the_paired_standard_error_of_item_differences() -> None:
    a, b = [1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1, 0, 1]
    d = paired_delta(_acc("cloze", a), _acc("cloze", b))
    differences = [x - y for x, y in zip(a, b)]
    assert d.delta == pytest.approx(statistics.mean(differences))
    assert d.se == pytest.approx(statistics.stdev(differences) / math.sqrt(len(a)))


def test_a_constant_per_byte_shift_is_certain() -> None:
    shifted = _bpb("prose", {k: (y + 0.1 * x, x) for k, (y, x) in A.observations.items()})
    d = paired_delta(shifted, A)
    assert d.delta == pytest.approx(0.1) and d.se == pytest.approx(0.0, abs=1e-12)
    assert z_test(0.1, 0.0) == (math.inf, 0.0) and z_test(-0.1, 0.0) == (-math.inf, 0.0)
    assert all(math.isnan(v) for v in z_test(0.1, math.nan))


def test_mean_over_domains_by_hand() -> None:
    deltas = [PairedDelta("bpb/code", -0.1, 0.03, 10, 0, 1), PairedDelta("bpb/prose", 0.3, 0.04, 20, 0, 1)]
    mean = mean_over_domains(deltas)
    # Δ = (−0.1 + 0.3)/2 = 0.1; SE = √(0.03² + 0.04²)/2 = 0.05/2 = 0.025; z = 4; p = erfc(4/√2)
    assert mean.unit == MEAN_BPB and mean.n == 30
    assert (mean.delta, mean.se, mean.z) == pytest.approx((0.1, 0.025, 4.0))
    assert mean.p_value == pytest.approx(6.3342e-5, rel=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        mean_over_domains([])


def test_compare_models_per_unit_and_mean() -> None:
    code_a = _bpb("code", {"c1": (5.0, 10.0), "c2": (9.0, 10.0)})
    code_b = _bpb("code", {"c1": (6.0, 10.0), "c2": (9.5, 10.0)})
    model = {"bpb/prose": A, "bpb/code": code_a, "acc_norm/t": _acc("t", [1, 1, 0])}
    reference = {"bpb/prose": B, "bpb/code": code_b, "acc_norm/t": _acc("t", [1, 0, 0])}
    deltas = compare_models(model, reference, ("bpb", "acc_norm"))
    assert list(deltas) == ["acc_norm/t", "bpb/code", "bpb/prose", MEAN_BPB]
    expected = mean_over_domains([paired_delta(code_a, code_b), paired_delta(A, B)])
    assert deltas[MEAN_BPB] == expected and expected.delta == pytest.approx((-0.075 - 0.1) / 2)
    assert list(compare_models(model, reference)) == ["bpb/code", "bpb/prose", MEAN_BPB]

    table = compare_to_references({"target": reference, "fused": model}, ["target"])
    assert list(table) == ["target"] and list(table["target"]) == ["fused"]
    as_json = json.loads(json.dumps(comparisons_to_dict(table)))
    assert "paired z-test" in as_json["test"]
    assert (
        PairedDelta.from_dict(as_json["against"]["target"]["fused"][MEAN_BPB])
        == table["target"]["fused"][MEAN_BPB]
    )


def test_pairs_over_shared_observations_and_refuses_without_any() -> None:
    extra = _bpb("prose", {**B.observations, "d4": (100.0, 10.0)})
    assert paired_delta(A, extra) == paired_delta(A, B)
    bare = UnitScore("bpb/prose", "bpb", False, B.value, B.se, B.n)
    with pytest.raises(ValueError, match="no per-observation data"):
        paired_delta(A, bare)
    with pytest.raises(ValueError, match="share no observation"):
        paired_delta(A, _bpb("prose", {"e1": (1.0, 1.0), "e2": (2.0, 1.0)}))
    with pytest.raises(ValueError, match="one unit"):
        paired_delta(A, _bpb("code", dict(B.observations)))


def test_compare_score_records_from_the_cache_file_or_dicts(tmp_path: Path) -> None:
    model = {"bpb/prose": A, "acc_norm/t": _acc("t", [1, 1, 0])}
    reference = {"bpb/prose": B, "acc_norm/t": _acc("t", [1, 0, 0])}
    records = {}
    for name, scores in (("a", model), ("b", reference)):
        records[name] = {"facts": {"bpb_samples": 3}, "scores": {u: s.to_dict() for u, s in scores.items()}}
        (tmp_path / f"{name}.json").write_text(json.dumps(records[name]))
    expected = compare_models(model, reference)
    assert list(expected) == ["bpb/prose", MEAN_BPB]
    assert compare_score_records(tmp_path / "a.json", str(tmp_path / "b.json")) == expected
    assert compare_score_records(records["a"], records["b"]) == expected
    assert compare_score_records(records["a"]["scores"], reference) == expected
    assert load_unit_scores(tmp_path / "a.json")["bpb/prose"] == A
