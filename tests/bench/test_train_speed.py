"""Smoke test of bench/train_speed.py on the small distill world (tiny student, fake teachers):
the bare loop and distill both run, the ratio and both breakdowns are written, the machine recorded."""

import dataclasses
import json
from pathlib import Path

import yaml

from bench import train_speed
from tests.stages.distill.fake_world import fake_world


def test_train_speed_compares_distill_with_the_bare_loop(tmp_path_factory, tmp_path: Path) -> None:
    world = fake_world(tmp_path_factory.getbasetemp() / "distill-world")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(dataclasses.asdict(world.config_for(tmp_path / "runs")), sort_keys=False)
    )
    assert train_speed.main(["--config", str(config), "--quick", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "train_speed.json").read_text())
    none = result["cases"]["none"]
    assert none["bare/float32"]["tokens_per_s"] > 0 and none["distill/float32"]["tokens_per_s"] > 0
    ratio = result["ratios"]["none/float32"]
    assert 0 < ratio["median"] < 10 and len(ratio["rounds"]) == result["rounds"] == 1
    # Both loops are timed over the same micro-batches (the ones after the warm-up step).
    assert none["bare/float32"]["tokens"] == none["distill/float32"]["tokens"]
    common = {"student_forward", "micro_batch_losses", "backward", "optimizer_step", "other"}
    for loop in ("bare", "distill"):
        measured = none[f"{loop}/float32"]
        assert common <= measured["breakdown_share"].keys()
        assert abs(sum(measured["breakdown_share"].values()) - 1.0) < 1e-6
        # Seconds per step by part add up to the loop's seconds per step.
        step_s = measured["rounds"][0]["seconds"] / result["steps"]
        assert abs(sum(measured["step_s_by_part"].values()) - step_s) < 1e-6
    assert result["machine"]
    report = (tmp_path / "out" / "train_speed.md").read_text()
    assert "| none | distill | float32 |" in report
    assert "bf16 was not measured: " in report  # --quick: float32 only, and the report says why
    # The bf16 parity verdicts of the repository's own parity reports come with the speed-up, linked
    # from where the report lies; the float32 stage comparison is not a bf16 verdict.
    parity = {Path(r["path"]).parent.name: r for r in result["parity"]}
    assert {"bf16_mixed_parity"} <= parity.keys() and "zero0_parity" not in parity
    mixed = parity["bf16_mixed_parity"]
    assert (mixed["dtype"], mixed["parity"], len(mixed["delta_by_epoch"])) == ("bf16_mixed", False, 3)
    assert 0 < mixed["largest_abs_delta"] < 0.01
    assert ((tmp_path / "out") / mixed["path"]).is_file()
    assert "bf16_mixed | ce_exact_token_lam0.75 |" in report and "**does not hold**" in report

    # A parity run that lands later is added without measuring again: the speeds stay, the parity
    # section is the new root's.
    root = tmp_path / "parity"
    (root / "chunk").mkdir(parents=True)
    source = Path(train_speed.RESULTS) / "xeon_amx" / "chunk_bf16_mixed_parity"
    for name in ("train_parity.json", "train_parity.md"):
        (root / "chunk" / name).write_bytes((source / name).read_bytes())
    out = tmp_path / "out"
    assert train_speed.main(["--refresh-parity", "--out", str(out), "--parity-root", str(root)]) == 0
    refreshed = json.loads((out / "train_speed.json").read_text())
    assert refreshed["cases"] == result["cases"] and refreshed["ratios"] == result["ratios"]
    assert [(r["arm"], r["dtype"]) for r in refreshed["parity"]] == [("ce_chunk", "bf16_mixed")]
    refreshed_report = (out / "train_speed.md").read_text()
    assert "| ce_chunk |" in refreshed_report
    assert refreshed_report.split("## bf16 parity")[0] == report.split("## bf16 parity")[0]


def test_refresh_parity_without_a_measured_report_exits_2(tmp_path: Path, capsys) -> None:
    assert train_speed.main(["--refresh-parity", "--out", str(tmp_path)]) == 2
    assert "run `python -m bench.train_speed` first" in capsys.readouterr().err


def test_saved_batches_train_where_there_is_no_teacher_cache(
    tmp_path_factory, tmp_path: Path, capsys
) -> None:
    """`--save-batches` on the machine with the cache, `--batches` on one without (an offline GPU
    box): the same loops run on the saved micro-batches, the student named by `--student`."""
    world = fake_world(tmp_path_factory.getbasetemp() / "distill-world")
    settings = dataclasses.asdict(world.config_for(tmp_path / "runs"))
    with_cache, without = tmp_path / "with_cache.yaml", tmp_path / "without.yaml"
    with_cache.write_text(yaml.safe_dump(settings, sort_keys=False))
    student = settings["student"]["path"]
    settings["cache_dir"], settings["student"]["path"] = str(tmp_path / "no-cache"), str(tmp_path / "absent")
    without.write_text(yaml.safe_dump(settings, sort_keys=False))
    saved = tmp_path / "batches.pt"
    assert train_speed.main(["--config", str(with_cache), "--quick", "--save-batches", str(saved)]) == 0
    assert saved.is_file() and not (tmp_path / "out").exists()

    out = tmp_path / "out"
    argv = ["--config", str(without), "--batches", str(saved), "--student", student, "--out", str(out)]
    assert train_speed.main([*argv, "--quick", "--note", "random weights"]) == 0
    assert not (tmp_path / "no-cache").exists()
    result = json.loads((out / "train_speed.json").read_text())
    assert result["student"] == student and result["note"] == "random weights"
    assert result["cases"]["none"]["distill/float32"]["tokens_per_s"] > 0
    assert "Note: random weights" in (out / "train_speed.md").read_text()

    # Cases the file does not hold, or too few batches for the steps: exit 2 with the fix.
    capsys.readouterr()
    assert train_speed.main([*argv, "--cases", "chunk", "--steps", "1", "--rounds", "1"]) == 2
    assert "no batches of case(s) ['chunk']: rerun --save-batches" in capsys.readouterr().err
    assert train_speed.main([*argv, "--cases", "none", "--steps", "5", "--rounds", "1"]) == 2
    assert "rerun --save-batches with --steps 5" in capsys.readouterr().err
