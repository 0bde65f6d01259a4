"""The DeepSpeed seam: configs, the two-group AdamW and the schedule survive `deepspeed.initialize`
unchanged, and ZeRO-3 weights gather for export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from stages.distill import engine as ds
from stages.distill.model import FusionModule
from stages.distill.settings import DistillSettings
from stages.distill.strategies import parse_strategy


def test_prepare_env_fills_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    env = ds.prepare_distributed_env()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (0, 0, 1, True)
    import os

    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert ds.prepare_distributed_env().rank == 3  # a launcher's values win


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_built_config_has_no_optimizer_or_scheduler(stage: int) -> None:
    config = ds.build_deepspeed_config(
        micro_batch_size=2, grad_accum_steps=4, zero_stage=stage, dtype="bfloat16", grad_clip=0.5
    )
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5 and config["bf16"]["enabled"]
    assert "optimizer" not in config and "scheduler" not in config


def test_user_json_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    config = ds.read_deepspeed_config(path, micro_batch_size=2, grad_accum_steps=4)
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 4
    path.write_text(json.dumps({"optimizer": {"type": "Adam", "params": {"lr": 1}}}))
    with pytest.raises(ValueError, match=r"'optimizer' section.*distill.lr"):
        ds.read_deepspeed_config(path, micro_batch_size=2, grad_accum_steps=4)
    path.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ValueError, match="'scheduler' section"):
        ds.read_deepspeed_config(path, micro_batch_size=2, grad_accum_steps=4)
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ValueError, match="distill.micro_batch_size is 2"):
        ds.read_deepspeed_config(path, micro_batch_size=2, grad_accum_steps=4)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        ds.read_deepspeed_config(path, micro_batch_size=2, grad_accum_steps=4)


def test_schedule_warms_up_linearly_then_decays_by_cosine_per_group() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = ds.build_optimizer(
        [params[0]], [params[1]], lr=1e-3, gate_lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8
    )
    scheduler = ds.cosine_with_warmup(optimizer, warmup_steps=4, max_steps=12)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    student = [s for s, _ in seen]
    assert student[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert student[8] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(g == pytest.approx(10 * s) for s, g in seen)  # one factor for both groups
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


@pytest.fixture
def fusion_module(tiny_student: Path) -> FusionModule:
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.float32)
    return FusionModule(
        student,
        parse_strategy("adaptive"),
        3,
        DistillSettings(),
        num_features=1,
    )


def _engine(module: FusionModule, stage: int):
    ds.prepare_distributed_env()
    optimizer = ds.build_optimizer(
        module.student_parameters(),
        module.gate_parameters(),
        lr=3e-4,
        gate_lr=5e-3,
        weight_decay=0.01,
        betas=(0.8, 0.9),
        eps=1e-7,
    )
    scheduler = ds.cosine_with_warmup(optimizer, warmup_steps=2, max_steps=10)
    config = ds.build_deepspeed_config(
        micro_batch_size=1, grad_accum_steps=1, zero_stage=stage, dtype="float32", grad_clip=1.0
    )
    return ds.initialize_engine(module, optimizer, scheduler, config), scheduler


def test_initialize_keeps_our_optimizer_groups_betas_and_schedule(fusion_module: FusionModule) -> None:
    engine, scheduler = _engine(fusion_module, stage=2)
    assert engine.lr_scheduler is scheduler
    groups = engine.optimizer.param_groups
    assert [g["name"] for g in groups] == ["student", "gate"]
    # Warm-up step 0 of 2: half the peak LR, per group; our betas and eps, not DeepSpeed's.
    assert [g["lr"] for g in groups] == pytest.approx([1.5e-4, 2.5e-3])
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-7 for g in groups)
    assert isinstance(engine.optimizer.optimizer, torch.optim.AdamW)
    # The gate is inside the wrapped module, and DeepSpeed's step moves both groups by our schedule.
    assert engine.module.gate is fusion_module.gate
    ids = torch.randint(0, 100, (1, 8))
    loss = engine.module.student(input_ids=ids).logits.float().logsumexp(-1).mean()
    loss = loss + engine.module.gate(torch.rand(1, 3), torch.ones(1, 3, dtype=torch.bool)).sum() * 0
    engine.backward(loss)
    engine.step()
    assert [g["lr"] for g in engine.optimizer.param_groups] == pytest.approx([3e-4, 5e-3])


def test_zero3_gathers_full_weights_for_export(fusion_module: FusionModule) -> None:
    expected = {k: v.clone() for k, v in fusion_module.student.state_dict().items()}
    engine, _ = _engine(fusion_module, stage=3)
    partitioned = next(engine.module.student.parameters())
    assert partitioned.numel() == 0  # ZeRO-3 keeps only a partition outside a gather
    gathered = ds.gathered_state_dict(engine.module.student)
    assert gathered.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(gathered[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(("cuda", "expected"), [(False, "float32"), (True, "bfloat16")])
def test_auto_training_dtype_is_bf16_on_a_gpu_only(monkeypatch: pytest.MonkeyPatch, cuda, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert ds.resolve_dtype("auto") == expected
    assert ds.resolve_dtype("bf16_mixed") == "bf16_mixed"  # an explicit dtype stays


def test_autocast_student_runs_the_body_in_bf16_and_the_head_in_fp32(tiny_student) -> None:
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.float32)
    seen: dict[str, torch.dtype] = {}
    student.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.update(body=o.dtype))
    student.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.update(head_in=i[0].dtype))
    ds.autocast_student(student, "cpu")
    ids = torch.randint(0, 1000, (2, 12))
    logits = student(input_ids=ids).logits
    assert seen == {"body": torch.bfloat16, "head_in": torch.float32} and logits.dtype == torch.float32
    # Same weights, fp32 state dict (nothing renamed), logits close to the fp32 model's.
    assert all(v.dtype == torch.float32 for v in student.state_dict().values())
    assert student.state_dict().keys() == reference.state_dict().keys()
    torch.testing.assert_close(logits, reference(input_ids=ids).logits, atol=0.15, rtol=0.05)
    logits.float().logsumexp(-1).sum().backward()  # gradients reach the fp32 weights
    assert student.model.layers[0].mlp.down_proj.weight.grad.dtype == torch.float32
