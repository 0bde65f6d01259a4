"""Smoke test of bench/train_speed.py on the small distill world (tiny student, fake teachers):
the bare loop and distill both run, the ratio and the breakdown are written, the machine recorded."""

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
    assert 0 < result["ratios"]["none/float32"] < 10
    # Both loops are timed over the same micro-batches (the ones after the warm-up step).
    assert none["bare/float32"]["tokens"] == none["distill/float32"]["tokens"]
    shares = none["distill/float32"]["breakdown_share"]
    assert {"student_forward", "micro_batch_losses", "backward", "optimizer_step", "other"} <= shares.keys()
    assert abs(sum(shares.values()) - 1.0) < 1e-6 and result["machine"]
    assert "| none | distill | float32 |" in (tmp_path / "out" / "train_speed.md").read_text()
