"""Training speed: a bare PyTorch loop against `distill` on the same student, batches and dtype,
side by side in one run, with distill's time broken down. Writes bench/results/train_speed.{json,md}.

    .venv/bin/python -m bench.train_speed [--config configs/experiment.yaml] [--steps 4] [--quick]

**Bare loop**: the student, torch AdamW, next-token cross-entropy, gradient clipping; no DeepSpeed,
no teachers. **distill**: the real `DistillRecipe` (DeepSpeed ZeRO-2, the loss terms, the log)
over the same micro-batches, built beforehand by the real loader (so the loader's cost is
measured on its own, in this process: `loader_s_per_batch`), with `loader_workers=0` and no
checkpoint writes. Both run `--steps` optimizer steps after one warm-up step. The breakdown times
the distill step's parts by wrapping them: the student's forward, the sample weights (strategy and
gate), the loss terms, backward, the optimizer step, the log's statistics (with the gate
diagnostics) and the log line; `other` is the rest of the loop.

Dtypes: `float32`, `bf16_mixed` (fp32 weights, bf16 autocast, fp32 head and losses) and, for
distill, DeepSpeed's `bfloat16` (bf16 weights, fp32 master copies). CPU model, flags and the load
average go with every figure: machines of one kind differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from bench.distill_bench import RESULTS
from data_schemas.atomic import write_json_atomic

CASES = (
    # (label, strategy, distill overrides)
    ("none", "none", {}),
    ("chunk", "single:{teacher}", {"objective": "chunk", "lam": 0.5}),
    ("adaptive_fusion", "adaptive", {"objective": "fusion", "gate_objective": "likelihood"}),
)
DTYPES = ("float32", "bf16_mixed", "bfloat16")


class ListStream(IterableDataset):
    """Prebuilt micro-batches in a loop, with the loader's one-integer state (for the recipe)."""

    def __init__(self, batches: list, teacher_names: tuple[str, ...]) -> None:
        super().__init__()
        self.batches, self.teacher_names, self.position = batches, teacher_names, 0

    def __iter__(self) -> Iterator:
        while True:
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield batch

    def state_dict(self, batches_consumed: int) -> dict[str, int]:
        return {"batches": batches_consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["batches"]


class Timers:
    """Seconds spent inside wrapped callables, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed


def build_batches(config: Any, count: int) -> tuple[list, float, tuple[str, ...]]:
    """`count` micro-batches of the config's stream, the loader's seconds per batch, the teachers."""
    from pipeline.distillation import build_stream, resolve_stream_inputs
    from stages.distill.loader import _ShardReader

    inputs = resolve_stream_inputs(config, checksums=False)
    stream = build_stream(config, inputs, rank=0, world_size=1)
    reader = _ShardReader(stream)
    stream.build_batch(reader, 0)  # the first shard's read and decode, once
    start = time.perf_counter()
    batches = [stream.build_batch(reader, i) for i in range(count)]
    return batches, (time.perf_counter() - start) / count, stream.teacher_names


def bare_loop(config: Any, batches: list, dtype: str, steps: int) -> dict[str, Any]:
    """tok/s of plain next-token training on the batches (one warm-up step)."""
    from transformers import AutoModelForCausalLM

    from stages.distill import engine as ds

    d = config.distill
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(config.student.path, dtype=torch.float32)
    if dtype == ds.MIXED_DTYPE:
        ds.autocast_student(model, "cpu")
    elif dtype != "float32":
        raise ValueError(f"the bare loop runs float32 or {ds.MIXED_DTYPE}, got {dtype}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=d.lr, betas=(d.adam_beta1, d.adam_beta2))
    stream = itertools.cycle(batches)
    seconds, tokens = 0.0, 0
    for step in range(steps + 1):
        start, step_tokens = time.perf_counter(), 0
        for _ in range(d.grad_accum_steps):
            batch = next(stream)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            targets = batch.input_ids[:, 1:].masked_fill(~batch.loss_mask[:, :-1], -100)
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)
            (loss / d.grad_accum_steps).backward()
            step_tokens += batch.num_tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), d.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # step 0 warms up
            seconds += time.perf_counter() - start
            tokens += step_tokens
    del model, optimizer
    gc.collect()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def distill_loop(
    config: Any, batches: list, teachers: tuple[str, ...], dtype: str, steps: int
) -> dict[str, Any]:
    """tok/s of the real recipe on the batches (one warm-up step), with the breakdown."""
    import stages.distill.model as model_module
    from stages.distill.recipe import DistillRecipe, RecipeRun
    from stages.distill.strategies import parse_strategy
    from stages.world import World

    settings = dataclasses.replace(config.distill, dtype=dtype, loader_workers=0, max_steps=steps + 1)
    timers = Timers()
    saved = {name: getattr(model_module, name) for name in ("micro_batch_losses", "sample_weights")}
    with tempfile.TemporaryDirectory() as tmp:
        run = RecipeRun(
            Path(tmp),
            Path(config.student.path),
            parse_strategy(settings.strategy, list(teachers)),
            World(0, 1, 0),
            config.seed,
            stop_after_steps=1,
            progress=False,
            tensorboard=False,
        )
        stream = ListStream(batches, teachers)
        recipe = DistillRecipe(settings, run, stream)
        try:
            for name, fn in saved.items():
                setattr(model_module, name, timers.wrap(name, fn))
            recipe.setup()
            recipe.save_checkpoint = lambda: None  # a checkpoint write is no step cost
            student = recipe.engine.module.student
            student.forward = timers.wrap("student_forward", student.forward)
            recipe.engine.backward = timers.wrap("backward", recipe.engine.backward)
            recipe.engine.step = timers.wrap("optimizer_step", recipe.engine.step)
            recipe.stats.add = timers.wrap("log_statistics", recipe.stats.add)
            recipe.stats._add_gate_diagnostics = timers.wrap(
                "gate_diagnostics", recipe.stats._add_gate_diagnostics
            )
            recipe.metrics.log = timers.wrap("log_line", recipe.metrics.log)
            recipe.train()  # the warm-up step
            recipe.run = dataclasses.replace(run, stop_after_steps=steps + 1)
            timers.active = True
            first, start = stream.position, time.perf_counter()
            recipe.train()
            seconds = time.perf_counter() - start
            served = range(first, stream.position)  # the measured steps' batches, after the warm-up's
        finally:
            for name, fn in saved.items():
                setattr(model_module, name, fn)
            recipe.cleanup()
    assert len(served) == steps * settings.grad_accum_steps, "one batch per micro-step"
    tokens = sum(batches[i % len(batches)].num_tokens for i in served)
    parts = dict(timers.seconds)
    # stats.add contains the gate diagnostics: report them apart.
    parts["log_statistics"] = parts.get("log_statistics", 0.0) - parts.get("gate_diagnostics", 0.0)
    parts["other"] = seconds - sum(parts.values())
    gc.collect()
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "breakdown_s": parts,
        "breakdown_share": {k: v / seconds for k, v in parts.items()},
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.curves import strongest_teacher
    from pipeline.distillation import resolve_stream_inputs
    from stages.cpu_features import cpu_summary, has_native_bf16
    from stages.distill import engine as ds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/experiment.yaml")
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per case")
    parser.add_argument("--quick", action="store_true", help="one case, one step (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ds.prepare_distributed_env()
    config = load_config(args.config)
    teacher = strongest_teacher(resolve_stream_inputs(config, checksums=False))
    steps = 1 if args.quick else args.steps
    cases = CASES[:1] if args.quick else CASES
    dtypes = DTYPES if has_native_bf16() and not args.quick else ("float32",)
    machine = cpu_summary()
    results: dict[str, Any] = {"config": args.config, "machine": machine, "steps": steps, "cases": {}}
    for label, strategy, overrides in cases:
        distill = dataclasses.replace(config.distill, strategy=strategy.format(teacher=teacher), **overrides)
        case_config = dataclasses.replace(config, distill=distill)
        count = (steps + 1) * distill.grad_accum_steps
        batches, loader_s, teachers = build_batches(case_config, count)
        case: dict[str, Any] = {
            "strategy": distill.strategy,
            "overrides": overrides,
            "loader_s_per_batch": loader_s,
        }
        for dtype in dtypes:
            load = os.getloadavg()[0]
            if label == "none" and dtype != "bfloat16":
                case[f"bare/{dtype}"] = {**bare_loop(case_config, batches, dtype, steps), "load": load}
            case[f"distill/{dtype}"] = {
                **distill_loop(case_config, batches, teachers, dtype, steps),
                "load": os.getloadavg()[0],
            }
            print(
                f"{label} {dtype}: "
                + ", ".join(
                    f"{k} {v['tokens_per_s']:.0f} tok/s"
                    for k, v in case.items()
                    if isinstance(v, dict) and "tokens_per_s" in v and k.endswith(dtype)
                ),
                flush=True,
            )
        results["cases"][label] = case
    bare = results["cases"].get("none", {})
    results["ratios"] = {
        f"{label}/{dtype}": case[f"distill/{dtype}"]["tokens_per_s"] / bare[f"bare/{dtype}"]["tokens_per_s"]
        for label, case in results["cases"].items()
        for dtype in dtypes
        if f"bare/{dtype}" in bare and f"distill/{dtype}" in case
    }
    results["bf16_speedup"] = {
        f"{label}/{dtype}": case[f"distill/{dtype}"]["tokens_per_s"] / case["distill/float32"]["tokens_per_s"]
        for label, case in results["cases"].items()
        for dtype in dtypes
        if dtype != "float32"
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "train_speed.json", results)
    (args.out / "train_speed.md").write_text(render(results), encoding="utf-8")
    print(render(results))
    return 0


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Training speed: bare loop vs distill",
        "",
        f"Config `{results['config']}`, {results['steps']} measured optimizer steps per case after one "
        f"warm-up step. Machine: {results['machine']}.",
        "",
        "| case | loop | dtype | tok/s | vs bare loop (same dtype) | load |",
        "|---|---|---|---|---|---|",
    ]
    for label, case in results["cases"].items():
        for key, value in case.items():
            if not (isinstance(value, dict) and "tokens_per_s" in value):
                continue
            loop, dtype = key.split("/")
            ratio = results["ratios"].get(f"{label}/{dtype}") if loop == "distill" else None
            lines.append(
                f"| {label} | {loop} | {dtype} | {value['tokens_per_s']:.0f} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {value['load']:.1f} |"
            )
    lines += [
        "",
        "bf16 speed-up of distill over its float32: "
        + ", ".join(f"{k} {v:.2f}×" for k, v in results["bf16_speedup"].items()),
        "",
    ]
    lines += ["## Where a distill step's time goes (share of wall time)", ""]
    for label, case in results["cases"].items():
        lines.append(
            f"- loader (in-process, before training), {label}: {case['loader_s_per_batch']:.3f} s per micro-batch"
        )
    parts = sorted(
        {
            p
            for case in results["cases"].values()
            for k, v in case.items()
            if k.startswith("distill/")
            for p in v["breakdown_share"]
        }
    )
    header = [
        f"{label}/{k.split('/')[1]}"
        for label, case in results["cases"].items()
        for k in case
        if k.startswith("distill/")
    ]
    lines += ["", "| part | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for part in parts:
        cells = [
            f"{case[k]['breakdown_share'].get(part, 0.0):.1%}"
            for case in results["cases"].values()
            for k in case
            if k.startswith("distill/")
        ]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
