"""`polyfuse curves` end to end on fake-backend teacher shards with a tiny student: each arm trains
for two epochs on the samples every teacher covers, every epoch is scored, the report pairs each
arm's best epoch with `none`'s; a rerun trains nothing again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import pipeline.distillation
from pipeline.config import EvaluateConfig
from pipeline.curves import (
    ARMS,
    Plan,
    arm_config,
    choose_arms,
    cross_fitted,
    curve_markdown,
    curve_results,
    plan_curves,
    run_curves,
    seed_mean,
    seed_results,
    strongest_teacher,
)
from stages.evaluate.unit_score import UnitScore
from tests.stages.distill.fake_world import GEMMA, SMOLLM2, fake_world

RUN_ARMS = ["none", "ce_chunk", "ce_exact_token"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    for folder in (SMOLLM2, GEMMA):
        if not (folder / "tokenizer.json").is_file():
            pytest.fail(f"{folder} is missing: run `make tokenizers`")
    world = fake_world(tmp_path_factory.getbasetemp() / "distill-world")
    evaluate = EvaluateConfig(max_samples_per_domain=3, max_tokens=256, batch_tokens=512, tasks=[], threads=1)
    runs = tmp_path_factory.mktemp("curves")
    return dataclasses.replace(world.config_for(runs, name="curves"), evaluate=evaluate)


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict, Path]:
    """(config, results, results_dir) of RUN_ARMS trained for two epochs, once for the module's tests.

    Six samples a step: an epoch is two optimizer steps (one per train shard) rather than six, each
    at a non-zero learning rate (one warm-up step reaches the peak), so every epoch's export is still
    a trained student of its own."""
    config = dataclasses.replace(config, distill=dataclasses.replace(config.distill, micro_batch_size=6))
    results_dir = tmp_path_factory.mktemp("curves-results")
    results = run_curves(config, RUN_ARMS, epochs=2, teacher="gemma", progress=False, results_dir=results_dir)
    return config, results, results_dir


def test_the_plan_covers_the_shards_every_teacher_has(config) -> None:
    plan = plan_curves(config, epochs=3, lr=None, teacher="gemma")
    # Gemma covers the first 2 shards of 6 samples; 2 samples per optimizer step.
    assert (plan.train_shards, plan.steps_per_epoch, plan.lr) == (2, 6, config.distill.lr)
    sub = arm_config(config, ARMS["ce_chunk"], plan)
    d = sub.distill
    assert (d.strategy, d.objective, d.lam, d.train_shards) == ("single:gemma", "chunk", 0.5, 2)
    assert (d.max_steps, d.export_every, d.checkpoint_every) == (18, 6, 6)
    assert sub.name == f"ce_chunk-lr{config.distill.lr:g}-e3-{plan.dtype}" and d.dtype == plan.dtype
    # An lr ablation keeps its own learning rate, and its folder says so.
    fast = arm_config(config, ARMS["ce_exact_token_lr2e-4"], plan)
    assert fast.distill.lr == 2e-4 and fast.name == f"ce_exact_token_lr2e-4-lr0.0002-e3-{plan.dtype}"
    with pytest.raises(ValueError, match="--teacher 'gpt'"):
        plan_curves(config, epochs=3, lr=None, teacher="gpt")
    with pytest.raises(ValueError, match="unknown arm"):
        choose_arms(["chunky"])
    # By default the exact-token arms run at the measured balance λ = 0.75; λ = 0.5 is an ablation.
    default = {a.name: dict(a.overrides).get("lam") for a in choose_arms(None)}
    assert default["ce_exact_token_lam0.75"] == default["ce_exact_token_gate_lam0.75_no_self"] == 0.75
    assert "ce_exact_token" not in default and ARMS["ce_exact_token"].ablation
    # The default gate arm reads every teacher but the one that is the student itself (all of them
    # where none is); the gate over all of them is an ablation.
    no_self = ARMS["ce_exact_token_gate_lam0.75_no_self"]
    assert no_self.name in default and ARMS["ce_exact_token_gate_lam0.75"].ablation
    mirror = dataclasses.replace(config, student=dataclasses.replace(config.student, path=str(SMOLLM2)))
    sub = arm_config(mirror, no_self, plan)
    assert [t.name for t in sub.teachers] == ["gemma"] and sub.distill.strategy == "adaptive"
    every = arm_config(mirror, ARMS["ce_exact_token_gate_lam0.75"], plan)
    assert [t.name for t in every.teachers] == ["smol", "gemma"]
    assert [t.name for t in arm_config(config, no_self, plan).teachers] == ["smol", "gemma"]
    chunk_no_self = arm_config(mirror, ARMS["ce_chunk_gate_no_self"], plan)
    assert [t.name for t in chunk_no_self.teachers] == ["gemma"]
    assert chunk_no_self.distill.objective == "chunk"
    only_self = dataclasses.replace(mirror, teachers=mirror.teachers[:1])
    with pytest.raises(ValueError, match="every teacher is the student"):
        arm_config(only_self, no_self, plan)


def test_the_default_teacher_is_the_one_with_the_lowest_bits_per_byte(config) -> None:
    from data_schemas.teacher_shard import decode_table, read_teacher_shard
    from pipeline.distillation import resolve_stream_inputs

    inputs = resolve_stream_inputs(config, checksums=False)
    means = {
        t.name: sum(s.bits_per_byte for p in t.shards.values() for s in decode_table(read_teacher_shard(p)))
        / sum(len(decode_table(read_teacher_shard(p))) for p in t.shards.values())
        for t in inputs.teachers
    }
    assert strongest_teacher(inputs) == min(means, key=means.__getitem__)


def test_curves_train_score_every_epoch_and_rerun_without_training(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, results, results_dir = trained
    assert results["plan"]["steps_per_epoch"] == 2
    assert list(results["curves"]) == RUN_ARMS
    for arm, points in results["curves"].items():
        assert [p["epoch"] for p in points] == [1, 2]
        for point in points:
            assert {"mean bpb", "mixed"} <= point.keys() and point["mean bpb"]["se"] > 0
        assert results["best_epoch"][arm] in (1, 2)
        assert results["arms"][arm]["timing"]["seconds"] > 0
    # Trained students differ from the untrained one on the held-out documents.
    assert all(abs(p["mean bpb"]["delta"]) > 0 for points in results["curves"].values() for p in points)
    assert set(results["best_vs_none_best"]) == {"ce_chunk", "ce_exact_token"}
    assert list(results["best_pairs"]) == ["ce_chunk − ce_exact_token"]
    by_epoch = results["vs_none_by_epoch"]
    assert set(by_epoch) == {"ce_chunk", "ce_exact_token"} and all(len(p) == 2 for p in by_epoch.values())
    # The same documents and bytes: against `none` is the difference of the two curves' points.
    for arm, points in by_epoch.items():
        for point, mine, none in zip(points, results["curves"][arm], results["curves"]["none"]):
            assert point["delta"] == pytest.approx(mine["mean bpb"]["delta"] - none["mean bpb"]["delta"])
            assert point["se"] > 0
    assert set(results["crossfit_vs_none"]) == {"ce_chunk", "ce_exact_token"}
    assert all(set(e) <= {1, 2} and len(e) == 2 for e in results["crossfit_best_epochs"].values())
    for name in ("curves.json", "curves.md", "curves.png"):
        assert (results_dir / name).is_file() and (
            Path(config.runs_dir) / "curves" / "report" / name
        ).is_file()
    markdown = (results_dir / "curves.md").read_text()
    assert "| ce_chunk |" in markdown and "best epoch" in markdown.lower()
    # The epoch exports are plain HF folders; the checkpoints are gone once the arm is done.
    arm_dir = Path(results["arms"]["ce_chunk"]["folder"])
    assert (
        len(list((arm_dir / "exports").glob("step-*/config.json"))) == 2
        and not (arm_dir / "checkpoints").exists()
    )

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun must not train")

    monkeypatch.setattr(pipeline.distillation, "distill_from_config", no_training)
    again = run_curves(config, RUN_ARMS, epochs=2, teacher="gemma", progress=False)
    assert json.dumps(again["curves"], sort_keys=True) == json.dumps(results["curves"], sort_keys=True)


def test_an_arm_trained_otherwise_is_refused_not_reused(trained) -> None:
    """The folder name holds the learning rate, length and dtype; any other setting that changed
    since the arm was trained (here β) makes its exports another run's, which are not reused."""
    config, results, _ = trained
    assert (Path(results["arms"]["ce_chunk"]["folder"]) / "export" / "config.json").is_file()
    changed = dataclasses.replace(config, distill=dataclasses.replace(config.distill, beta=0.25))
    with pytest.raises(ValueError, match=r"arm ce_chunk: .*\(distill\.beta 0\.5 → 0\.25\)"):
        run_curves(changed, ["ce_chunk"], epochs=2, teacher="gemma", progress=False)


def test_a_second_seed_trains_every_arm_again_and_is_compared_with_the_first(trained) -> None:
    """`--seeds 0,4`: seed 0's arm is the one already trained (not trained again), seed 4's is new,
    in its own folder; the report adds the comparisons over seeds. (A seed permutes the shard order of
    epochs after the first; of the two train shards, seed 4 reverses them in epoch 2, seeds 1–3 do not.)"""
    config, results, _ = trained
    again = run_curves(config, ["none"], epochs=2, teacher="gemma", seeds=[0, 4], progress=False)
    assert json.dumps(again["curves"], sort_keys=True) == json.dumps(
        {"none": results["curves"]["none"]}, sort_keys=True
    )
    seeds = again["seeds"]
    assert seeds["seeds"] == [0, 4] and set(seeds["curves"]) == {"0", "4"}
    assert seeds["curves"]["0"]["none"] == [p["mean bpb"] for p in results["curves"]["none"]]
    # The same first epoch; another order of the samples in the second trains another student.
    first, other = seeds["curves"]["0"]["none"], seeds["curves"]["4"]["none"]
    assert first[0] == other[0] and first[1] != other[1]
    assert list(seeds["seed_spread"]) == ["none: seed 4 − seed 0"]
    assert (Path(config.runs_dir) / "curves" / "arms" / "none-lr0.001-e2-float32-seed4" / "export").is_dir()
    assert "## Over seeds 0, 4" in curve_markdown(again)


def _score(unit: str, bits: list[float]) -> UnitScore:
    return UnitScore.from_observations(unit, "bpb", False, {f"d{i}": (b, 1.0) for i, b in enumerate(bits)})


def test_cross_fitting_scores_each_half_by_the_epoch_the_other_half_chose() -> None:
    # Documents d0, d2 form half 0 and d1, d3 half 1. On half 0 epoch 2 is best, on half 1 epoch 1:
    # half 0's documents get epoch 1 (chosen by half 1) and half 1's get epoch 2 (chosen by half 0).
    scores = {
        "arm@1": {"bpb/code": _score("bpb/code", [1.0, 0.5, 1.0, 0.5])},
        "arm@2": {"bpb/code": _score("bpb/code", [0.8, 0.7, 0.8, 0.7])},
    }
    crossed, epochs = cross_fitted(scores, "arm", 2)
    assert epochs == [1, 2]
    assert crossed["bpb/code"].observations == {
        "d0": (1.0, 1.0),
        "d1": (0.7, 1.0),
        "d2": (1.0, 1.0),
        "d3": (0.7, 1.0),
    }
    # On all documents the two epochs tie at 0.75; cross-fitting reports what each half's choice earns
    # on the documents it did not see.
    assert crossed["bpb/code"].value == pytest.approx(0.85)


def test_over_seeds_each_document_is_the_mean_of_its_seeds_at_their_best_epochs() -> None:
    # Seed 0: none is best at epoch 2, arm at epoch 1; seed 1: none at epoch 1, arm at epoch 2.
    bits = {
        0: {"untrained": [2.0, 2.0], "none@1": [1.0, 1.0], "none@2": [0.9, 0.9], "arm@1": [0.8, 0.6], "arm@2": [1.2, 1.2]},
        1: {"untrained": [2.0, 2.0], "none@1": [0.7, 0.7], "none@2": [1.1, 1.1], "arm@1": [1.3, 1.3], "arm@2": [0.6, 0.4]},
    }  # fmt: skip
    by_seed = {
        seed: {label: {"bpb/code": _score("bpb/code", b)} for label, b in labels.items()}
        for seed, labels in bits.items()
    }
    plan = Plan(epochs=2, lr=1e-4, teacher="t", train_shards=1, steps_per_epoch=1, dtype="float32")
    per_seed = {seed: curve_results(scores, ["none", "arm"], plan) for seed, scores in by_seed.items()}
    out = seed_results(by_seed, per_seed, ["none", "arm"])
    assert out["best_epoch"] == {"0": {"none": 2, "arm": 1}, "1": {"none": 1, "arm": 2}}
    # Per document: arm (0.8 + 0.6) / 2, (0.6 + 0.4) / 2 against none (0.9 + 0.7) / 2 twice.
    pooled = out["pooled_vs_none"]["arm"]["code"]
    assert pooled["delta"] == pytest.approx(((0.7 - 0.8) + (0.5 - 0.8)) / 2)
    assert out["vs_none"]["0"]["arm"]["code"]["delta"] == pytest.approx(0.7 - 0.9)
    assert out["vs_none"]["1"]["arm"]["code"]["delta"] == pytest.approx(0.5 - 0.7)
    assert out["seed_spread"]["arm: seed 1 − seed 0"]["code"]["delta"] == pytest.approx(0.5 - 0.7)
    assert out["seed_spread"]["none: seed 1 − seed 0"]["code"]["delta"] == pytest.approx(0.7 - 0.9)


def test_seeds_scored_on_different_documents_are_not_averaged() -> None:
    with pytest.raises(ValueError, match="different documents"):
        seed_mean([{"bpb/code": _score("bpb/code", [1.0, 2.0])}, {"bpb/code": _score("bpb/code", [1.0])}])
