"""The DeepSpeed side of the distill loop — the only module of polyfuse that imports deepspeed.

What the recipe gets from here, and why each piece is written out instead of left to defaults:

- `prepare_distributed_env`: a plain `python -m ...` run is one rank. DeepSpeed looks for an MPI
  launcher unless RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT are set, so they get
  single-process defaults; on a machine without CUDA, `DS_ACCELERATOR=cpu` and gloo.
- `build_deepspeed_config` / `read_deepspeed_config`: the JSON DeepSpeed sees, with no `optimizer`
  or `scheduler` section — the optimizer and the schedule are built here and handed over, because
  DeepSpeed's own ones silently replace per-group learning rates and Adam betas (docs/design.md §13).
- `build_optimizer`: torch AdamW with one group for the student and one for the gate (its own LR).
- `cosine_with_warmup`: a torch `LambdaLR`, which scales every group by the same factor and so keeps
  the two groups' LRs apart (DeepSpeed's `WarmupLR` sets one LR for all groups).
- `initialize_engine`: `deepspeed.initialize` with those objects, after skipping the JIT build of a
  shared-memory communication op that training never uses (72–96 s on a small CPU).
- `gathered_state_dict`: full (ZeRO-3-gathered) weights of a submodule for export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.distill.settings import TrainingDtype, ZeroStage
from stages.world import World, resolve_world

logger = logging.getLogger(__name__)

_SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
_REFUSED_SECTIONS = ("optimizer", "scheduler")


def prepare_distributed_env() -> World:
    """Fill in single-process defaults for the variables DeepSpeed needs; return this rank's world.

    Variables a launcher (deepspeed, torchrun, SLURM wrappers) already set are left alone. The
    default MASTER_PORT is a free port, so two single-process runs on one machine do not collide.
    Called once per run (pipeline/distillation.py), before anything initialises torch.distributed.
    """
    for key, value in _SINGLE_PROCESS_ENV.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return resolve_world()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MIXED_DTYPE = "bf16_mixed"
"""`distill.dtype` of autocast training: fp32 weights (DeepSpeed's optimizer sees fp32, so the
master weights are the weights), the student's matmuls in bf16 under `torch.autocast`, its output
layer and every loss in fp32 (`autocast_student`)."""


def resolve_dtype(dtype: TrainingDtype) -> TrainingDtype:
    """The concrete training dtype for `distill.dtype`: ``auto`` is ``bfloat16`` on a GPU and
    float32 on a CPU. bf16 pays on CPUs with native bf16 (distill 1.46–1.53× as fast under
    `bf16_mixed`, 1.72–1.78× in `bfloat16` on a 2-core AMX Xeon: bench/results/train_speed.md),
    but neither mode passes the paired parity check against float32 (held-out bits per byte
    within 2 paired SE at every epoch; the same page), and an AVX2-only CPU emulates bf16 several
    times slower; so a CPU run trains in float32 unless the config asks for bf16. On a GPU bf16
    pays once the micro-batch fills it: on an H200, distill of a 135M student at 8 × 512 tokens
    ran 1.14× (`bfloat16`) and 1.20× (`bf16_mixed`) its float32 speed, at 2 × 512 tokens the step
    waited on kernel launches and bf16 was slower (docs/gpu.md).
    """
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def autocast_student(student: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Run `student`'s forward under bf16 autocast, its output layer (the logits) in fp32.

    The residual stream stays fp32 (embeddings are fp32 and autocast's bf16 outputs are added to
    it), so the final norm sees fp32; the head then takes that fp32 input in fp32, and the losses
    read fp32 logits. Patches the instance's `forward` (no new module: the state dict and the
    export are unchanged)."""
    head = student.get_output_embeddings()
    head_forward = head.forward

    def fp32_head(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return head_forward(hidden.float())

    head.forward = fp32_head
    body_forward = student.forward

    def mixed(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return body_forward(*args, **kwargs)

    student.forward = mixed
    return student


def build_deepspeed_config(
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    zero_stage: ZeroStage,
    dtype: TrainingDtype,
    grad_clip: float,
) -> dict[str, Any]:
    """The DeepSpeed JSON of a run, built from flat distill settings (checked; `dtype` resolved).

    No `optimizer`/`scheduler` sections: `initialize_engine` hands DeepSpeed the torch objects.
    `train_batch_size` is left to DeepSpeed (micro-batch × accumulation × world size).
    """
    assert dtype != "auto", "resolve distill.dtype first (resolve_dtype)"
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": False},
        # The recipe logs through its own metrics logger; DeepSpeed's per-step prints stay off.
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if zero_stage == 3:
        # Export gathers the weights itself (gathered_state_dict); no 16-bit copy at each save.
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    return config


def read_deepspeed_config(
    path: str | os.PathLike[str], *, micro_batch_size: int, grad_accum_steps: int
) -> dict[str, Any]:
    """A user's DeepSpeed JSON, checked against what the loader and the recipe assume.

    Raises:
        ValueError: unreadable JSON; an `optimizer` or `scheduler` section (they would replace the
            two-group AdamW and the schedule); a micro-batch or accumulation that differs from the
            distill config (the loader batches by the distill config).
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"cannot read the DeepSpeed config {path} ({e}): fix distill.deepspeed_config"
        ) from e
    if not isinstance(config, dict):
        raise ValueError(f"the DeepSpeed config {path} must hold a JSON object")
    for section in _REFUSED_SECTIONS:
        if section in config:
            raise ValueError(
                f"the DeepSpeed config {path} has a {section!r} section, which would silently replace "
                "polyfuse's two-group AdamW and cosine schedule: remove it and set distill.lr, "
                "distill.gate_lr, distill.warmup_steps and distill.adam_beta1/2 instead"
            )
    for key, want, field_name in (
        ("train_micro_batch_size_per_gpu", micro_batch_size, "distill.micro_batch_size"),
        ("gradient_accumulation_steps", grad_accum_steps, "distill.grad_accum_steps"),
    ):
        got = config.setdefault(key, want)
        if got != want:
            raise ValueError(
                f"the DeepSpeed config {path} sets {key}={got} but {field_name} is {want}: the "
                f"loader batches by {field_name}, so make the two agree"
            )
    config.pop("train_batch_size", None)
    config.setdefault("steps_per_print", 1 << 30)
    return config


def build_optimizer(
    student_params: list[nn.Parameter],
    gate_params: list[nn.Parameter],
    *,
    lr: float,
    gate_lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> torch.optim.AdamW:
    """AdamW with a `student` group and, when the gate has parameters, a `gate` group.

    The gate group has no weight decay: a 3-layer MLP over K scores is tiny and is pulled toward
    balance by the feedback loss already.
    """
    groups: list[dict[str, Any]] = [
        {"params": student_params, "lr": lr, "weight_decay": weight_decay, "name": "student"}
    ]
    if gate_params:
        groups.append({"params": gate_params, "lr": gate_lr, "weight_decay": 0.0, "name": "gate"})
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's LR over `warmup_steps`, then cosine decay toward 0.

    The factor of optimizer step s (0-based) is (s + 1) / warmup_steps during warm-up — the first
    step already moves the weights — and 0.5 · (1 + cos(π · progress)) after it.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def init_distributed() -> None:
    """torch.distributed through DeepSpeed (gloo without CUDA, nccl with it), once per process."""
    import deepspeed
    import deepspeed.ops

    # Private switch, pinned deepspeed: skip the shared-memory allreduce op's JIT build (it only
    # speeds up CPU collectives of big tensors, and costs ~90 s the first time in a fresh venv).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)


def initialize_engine(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
) -> Any:
    """`deepspeed.initialize` with the project's optimizer and schedule; returns the engine.

    Initialises torch.distributed first (`init_distributed`) from the environment
    `prepare_distributed_env` filled in. The returned engine's `optimizer` wraps `optimizer`, and
    `engine.lr_scheduler is scheduler`.
    """
    import deepspeed

    init_distributed()
    engine, _, _, engine_scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
    assert engine_scheduler is scheduler, "DeepSpeed replaced the LR scheduler"
    return engine


@contextlib.contextmanager
def gathered_parameters(module: nn.Module) -> Iterator[None]:
    """Inside the block every parameter of `module` holds its full value (ZeRO-3 gathers them;
    other stages keep full parameters on every rank, so this is a no-op there)."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def gathered_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of `module.state_dict()` with full (gathered) tensors; call on every rank."""
    with gathered_parameters(module):
        return {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}
