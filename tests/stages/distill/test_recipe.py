"""The training loop through real DeepSpeed (ZeRO-2, CPU, fp32) on real fake-backend shards:
every strategy, an exact resume, the export, a NaN stop, one teacher, and no teacher anywhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from safetensors.torch import load_file

from pipeline.distillation import StreamInputs, build_stream
from stages.distill import engine as ds
from stages.distill.gating import SelectionGate
from stages.distill.loader import TeacherSource, feature_count
from stages.distill.metrics import read_metrics
from stages.distill.recipe import DistillRecipe, NonFiniteLossError, RecipeRun, run_distill
from stages.distill.settings import DistillSettings
from stages.distill.strategies import parse_strategy

LOSS_TERMS = ("loss/total", "loss/clm", "loss/fusion", "loss/feedback")


class Plan(NamedTuple):
    """One test run: the distill section (the world's, with overrides) and the run around it."""

    settings: DistillSettings
    run: RecipeRun

    def but(self, **run: Any) -> Plan:
        return Plan(self.settings, dataclasses.replace(self.run, **run))


def settings_for(world, run_dir: Path, strategy: str, **distill: Any) -> Plan:
    settings = dataclasses.replace(world.config.distill, strategy=strategy, **distill)
    names = [t.name for t in world.config.teachers]
    run = RecipeRun(
        run_dir,
        world.student,
        parse_strategy(strategy, names),
        ds.prepare_distributed_env(),
        world.config.seed,
        progress=False,
        tensorboard=False,
    )
    return Plan(settings, run)


def stream_for(world, inputs: StreamInputs, plan: Plan, teachers=None):
    if teachers is not None:
        inputs = dataclasses.replace(inputs, teachers=teachers)
    return build_stream(
        dataclasses.replace(world.config, distill=plan.settings), inputs, rank=0, world_size=1
    )


def trained(world, inputs, plan: Plan, teachers=None) -> DistillRecipe:
    recipe = DistillRecipe(*plan, stream_for(world, inputs, plan, teachers))
    recipe.setup()
    return recipe


@pytest.mark.parametrize(
    "strategy",
    ["adaptive", "min_ce", "avg_ce", "min_bpb", "avg_bpb", "uniform", "single:gemma", "random_gate", "none"],
)
def test_each_strategy_trains_three_steps_through_deepspeed(
    world, stream_inputs, tmp_path: Path, strategy: str
) -> None:
    recipe = trained(world, stream_inputs, settings_for(world, tmp_path, strategy))
    module = recipe.engine.module
    student_before = [p.detach().clone() for p in module.student.parameters()]
    gate_before = [p.detach().clone() for p in module.gate_parameters()]
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    assert recipe.step == recipe.engine.global_steps == 3
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    terms = ("loss/total", "loss/clm") if strategy == "none" else LOSS_TERMS  # `none` computes CLM alone
    assert all(torch.isfinite(torch.tensor([r[t] for t in terms])).all() for r in records)
    assert any(
        not torch.equal(a, b) for a, b in zip(student_before, module.student.parameters(), strict=True)
    )
    groups = [g["name"] for g in recipe.engine.optimizer.param_groups]
    if strategy == "adaptive":
        assert groups == ["student", "gate"]
        # The persistent gate is trained: its parameters move (by the feedback and fusion losses).
        assert all(not torch.equal(a, b) for a, b in zip(gate_before, module.gate.parameters(), strict=True))
        assert records[-1]["gate/mean_w/smol"] + records[-1]["gate/mean_w/gemma"] == pytest.approx(
            1.0, abs=1e-6
        )
    else:
        assert groups == ["student"] and module.gate is None
    if strategy == "none":
        assert all(r["loss/total"] == r["loss/clm"] and "loss/fusion" not in r for r in records)
    else:
        assert all(r["loss/fusion"] > 0 for r in records)
    if strategy == "single:gemma":
        assert records[0]["gate/mean_w/smol"] == 0.0
    lines = (tmp_path / "logs" / "samples-rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_likelihood_gate_objective_trains_the_gate_and_logs_gate_nll(
    world, stream_inputs, tmp_path: Path
) -> None:
    settings = settings_for(world, tmp_path, "adaptive", gate_objective="likelihood")
    recipe = trained(world, stream_inputs, settings)
    gate = recipe.engine.module.gate
    before = [p.detach().clone() for p in gate.parameters()]
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    assert any(not torch.equal(a, b) for a, b in zip(before, gate.parameters(), strict=True))
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss/gate_nll"] > 0 and torch.isfinite(torch.tensor(r["loss/gate_nll"])) for r in records)
    assert recipe.resume_settings()["gate_objective"] == "likelihood"


def test_adaptive_over_all_four_features_trains_and_exports_a_gate_that_rebuilds(
    world, stream_inputs, tmp_path: Path
) -> None:
    """`gate_features: all`: four features per teacher into a Linear(2·4, 2·2) first layer; the gate
    trains, and gate.pt holds what rebuilds it (as pipeline/experiment.py does)."""
    recipe = trained(world, stream_inputs, settings_for(world, tmp_path, "adaptive", gate_features="all"))
    gate = recipe.engine.module.gate
    before = [p.detach().clone() for p in gate.parameters()]
    try:
        recipe.train()
        export = recipe.export()
    finally:
        recipe.cleanup()
    assert gate.num_features == 4 and tuple(gate.layers[0].weight.shape) == (4, 8)
    assert all(not torch.equal(a, b) for a, b in zip(before, gate.parameters(), strict=True))
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor([r[t] for t in LOSS_TERMS])).all() for r in records)
    assert all(r["loss/fusion"] > 0 for r in records)
    saved = torch.load(export / "gate.pt")
    assert saved["features"] == "all" and saved["teachers"] == ["smol", "gemma"]
    restored = SelectionGate(len(saved["teachers"]), feature_count(saved["features"]))
    restored.load_state_dict(saved["state_dict"])
    features, present = torch.rand(4, 2, 4), torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    torch.testing.assert_close(restored(features, present), gate(features, present))


@pytest.mark.parametrize(
    ("strategy", "workers", "stage"), [("adaptive", 2, 2), ("random_gate", 0, 2), ("adaptive", 0, 0)]
)
def test_resume_after_a_kill_matches_a_straight_run_exactly(
    world, stream_inputs, tmp_path: Path, strategy, workers, stage
) -> None:
    """6 steps straight vs 3 steps, stop, resume, 3 steps: identical losses, samples, weights, gate
    (at ZeRO stage 2, and at stage 0, the demo's single-rank setting)."""
    common = {"max_steps": 6, "checkpoint_every": 3, "loader_workers": workers, "zero_stage": stage}
    straight = settings_for(world, tmp_path / "straight", strategy, **common)
    run_distill(*straight, stream_for(world, stream_inputs, straight))
    split = settings_for(world, tmp_path / "split", strategy, **common)
    first = run_distill(*split.but(stop_after_steps=3), stream_for(world, stream_inputs, split))
    assert first.steps == 3 and first.export_dir is None and first.last_checkpoint.name == "step-000003"
    with pytest.raises(ValueError, match="already holds checkpoints: pass --resume"):
        run_distill(*split, stream_for(world, stream_inputs, split))
    second = run_distill(*split.but(resume=True), stream_for(world, stream_inputs, split))
    assert second.steps == 6

    def logged(run: Path) -> list[tuple]:
        return [
            tuple(r[t] for t in (*LOSS_TERMS, "lr/student"))
            for r in read_metrics(run / "logs" / "metrics.jsonl")
        ]

    assert len(logged(tmp_path / "straight")) == 6
    assert logged(tmp_path / "split") == logged(tmp_path / "straight")
    samples = [
        (run / "logs" / "samples-rank0.jsonl").read_text()
        for run in (tmp_path / "split", tmp_path / "straight")
    ]
    assert samples[0] == samples[1]
    a = load_file(tmp_path / "straight" / "export" / "model.safetensors")
    b = load_file(tmp_path / "split" / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    gates = [torch.load(run / "export" / "gate.pt") for run in (tmp_path / "straight", tmp_path / "split")]
    if strategy == "adaptive":
        assert all(
            torch.equal(gates[0]["state_dict"][k], gates[1]["state_dict"][k]) for k in gates[0]["state_dict"]
        )
    else:
        assert gates[0]["state_dict"] is None  # `random_gate` trains no gate


def test_export_loads_as_plain_hf_model_with_the_same_logits(world, stream_inputs, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = trained(world, stream_inputs, settings_for(world, tmp_path, "adaptive"))
    try:
        recipe.train()
        export = recipe.export()
        ids = torch.tensor([[1, 504, 2256, 30, 7, 99, 12000]])
        with torch.no_grad():
            expected = recipe.engine.module.student(input_ids=ids).logits
        gate = recipe.engine.module.gate
    finally:
        recipe.cleanup()
    model = AutoModelForCausalLM.from_pretrained(export)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert (
        tokenizer("def main():")["input_ids"]
        == AutoTokenizer.from_pretrained(world.student)("def main():")["input_ids"]
    )
    saved = torch.load(export / "gate.pt")
    restored = SelectionGate(2)
    restored.load_state_dict(saved["state_dict"])
    scores, present = torch.rand(4, 2), torch.ones(4, 2, dtype=torch.bool)
    torch.testing.assert_close(restored(scores, present), gate(scores, present))
    assert saved["teachers"] == ["smol", "gemma"] and saved["tau"] == 0.15
    stats = json.loads((export / "fusion_stats.json").read_text())
    assert stats["steps"] == 3 and stats["samples"] == 6 and sum(stats["selected_count_hist"]) == 6
    assert set(stats["teachers"]) == {"smol", "gemma"} and 0 < stats["teachers"]["gemma"]["aligned_rate"] < 1


def test_nan_loss_stops_naming_step_samples_and_last_checkpoint(world, stream_inputs, tmp_path: Path) -> None:
    recipe = trained(world, stream_inputs, settings_for(world, tmp_path, "adaptive", checkpoint_every=1))
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            output.logits = output.logits * float("nan")
        return output

    recipe.engine.module.student.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteLossError) as err:
            recipe.train()
    finally:
        recipe.cleanup()
    message = str(err.value)
    assert "optimizer step 3" in message and "step-000002" in message and "--resume" in message
    third = json.loads((tmp_path / "logs" / "samples-rank0.jsonl").read_text().splitlines()[1])
    assert third["step"] == 2  # the poisoned batch is the third; its ids are in the message
    assert "mixed:" in message


def test_one_teacher_gives_zero_feedback_and_no_crash(world, stream_inputs, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path, "adaptive")
    run_distill(*settings, stream_for(world, stream_inputs, settings, teachers=stream_inputs.teachers[:1]))
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert all(r["loss/feedback"] == 0.0 and r["loss/fusion"] > 0 for r in records)
    assert all(r["gate/mean_w/smol"] == pytest.approx(1.0) for r in records)


def test_no_teacher_anywhere_gives_zero_fusion_and_no_crash(world, stream_inputs, tmp_path: Path) -> None:
    gemma = stream_inputs.teachers[1]
    nowhere = TeacherSource(gemma.name, {}, gemma.vocab_map)  # covers no corpus shard at all
    settings = settings_for(world, tmp_path, "adaptive")
    result = run_distill(*settings, stream_for(world, stream_inputs, settings, teachers=[nowhere]))
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert all(
        r["loss/fusion"] == 0.0 and r["loss/feedback"] == 0.0 and r["fusion/fused_rate"] == 0.0
        for r in records
    )
    assert all(r["loss/total"] == pytest.approx(0.9 * r["loss/clm"]) for r in records)
    assert records[-1]["gate/selected_hist"] == [2, 0] and result.export_dir is not None


@pytest.mark.parametrize(
    ("stage", "dtype"), [(0, "float32"), (3, "float32"), (1, "bfloat16"), (2, "bf16_mixed")]
)
def test_other_zero_stages_and_bf16_train_and_export(
    world, stream_inputs, tmp_path: Path, stage, dtype
) -> None:
    from transformers import AutoModelForCausalLM

    settings = settings_for(world, tmp_path, "adaptive", max_steps=2, zero_stage=stage, dtype=dtype)
    result = run_distill(*settings, stream_for(world, stream_inputs, settings))
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert result.steps == 2 and all(
        torch.isfinite(torch.tensor([r[t] for t in LOSS_TERMS])).all() for r in records
    )
    model = AutoModelForCausalLM.from_pretrained(result.export_dir)  # ZeRO-3: gathered, not partitioned
    assert model.model.embed_tokens.weight.shape == (49152, 64)
    assert model.dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)


def test_a_finished_run_frees_its_engine(world, stream_inputs, tmp_path: Path) -> None:
    """`cleanup` destroys the DeepSpeed engine, so a process that trains several runs (the
    experiment driver) holds at most the current one's student and optimizer states."""
    import gc

    from deepspeed.runtime.engine import DeepSpeedEngine

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects())

    before = alive()
    recipe = trained(world, stream_inputs, settings_for(world, tmp_path, "adaptive"))
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    del recipe
    assert alive() == before


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, loading a student fails the test: what is refused must be refused before."""
    from transformers import AutoModelForCausalLM

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_a_resume_over_other_teachers_or_caches_is_refused_before_the_student_loads(
    world, stream_inputs, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    keys = {"corpus_key": "c0", "teacher_key smol": "k1", "teacher_key gemma": "k2"}
    plan = settings_for(world, tmp_path, "adaptive", max_steps=2, checkpoint_every=1).but(input_keys=keys)
    run_distill(*plan.but(stop_after_steps=1), stream_for(world, stream_inputs, plan))
    request.getfixturevalue("no_model_loads")
    fewer = plan.but(resume=True, input_keys={"corpus_key": "c0", "teacher_key smol": "k1"})
    recipe = DistillRecipe(
        *fewer, stream_for(world, stream_inputs, fewer, teachers=stream_inputs.teachers[:1])
    )
    with pytest.raises(ValueError, match=r"teachers \['smol', 'gemma'\] → \['smol'\]"):
        recipe.setup()
    # gemma's path changed under the same name: its cache, and so its key, is another one.
    moved = plan.but(resume=True, input_keys={**keys, "teacher_key gemma": "k2-elsewhere"})
    with pytest.raises(
        ValueError, match=r"--resume: this run changes teacher_key gemma 'k2' → 'k2-elsewhere'"
    ):
        DistillRecipe(*moved, stream_for(world, stream_inputs, moved)).setup()
    other = dataclasses.replace(
        plan.settings, target="residual", vocab_map="edit_distance", max_seq_tokens=32
    )
    changed = Plan(other, dataclasses.replace(plan.run, resume=True))
    with pytest.raises(ValueError) as err:
        DistillRecipe(*changed, stream_for(world, stream_inputs, changed)).setup()
    assert (
        "changes max_seq_tokens 64 → 32, target 'renormalised' → 'residual', vocab_map 'prefix' → "
        "'edit_distance' against its checkpoint"
    ) in str(err.value)


def test_a_checkpoint_cut_short_is_removed_with_one_line_and_the_run_goes_on(
    world, stream_inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill (or a full disk) during the first checkpoint leaves a folder and no `latest`: it is
    no checkpoint, so a plain rerun removes it, says so and trains; one cut short after a complete
    checkpoint is removed the same way and --resume goes on from the complete one."""
    plan = settings_for(world, tmp_path, "none", max_steps=2, checkpoint_every=1)
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step-000001").mkdir(parents=True)
    (checkpoints / "step-000001" / "mp_rank_00_model_states.pt").write_bytes(b"cut short")
    with caplog.at_level("WARNING", logger="stages.distill.recipe"):
        first = run_distill(*plan.but(stop_after_steps=1), stream_for(world, stream_inputs, plan))
    assert f"{checkpoints}: step-000001 was cut short before it was complete" in caplog.text
    assert first.steps == 1 and (checkpoints / "latest").read_text() == "step-000001"
    (checkpoints / "step-000002").mkdir()  # the next one cut short
    second = run_distill(*plan.but(resume=True), stream_for(world, stream_inputs, plan))
    assert second.steps == 2 and second.export_dir is not None
    assert "step-000002 was cut short" in caplog.text


def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_path_the_disk_and_the_fix(
    world, stream_inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = trained(world, stream_inputs, settings_for(world, tmp_path, "none", max_steps=1))
    tag = tmp_path / "checkpoints" / "step-000001"

    def disk_fills(*args: Any, **kwargs: Any) -> None:
        tag.mkdir(parents=True, exist_ok=True)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1152 vs 1040")

    monkeypatch.setattr(recipe.engine, "save_checkpoint", disk_fills)
    try:
        with pytest.raises(RuntimeError) as err:
            recipe.train()
    finally:
        recipe.cleanup()
    message = str(err.value)
    assert message.startswith(f"checkpoint {tag} could not be written: the disk mounted at ")
    assert "is full" in message and "rerun with --resume" in message and "\n" not in message
    assert not (tmp_path / "checkpoints" / "latest").exists()
