"""Training speed: a bare PyTorch loop against `distill` on the same student, batches and dtype,
side by side in one run, with both steps broken down. Writes bench/results/train_speed.{json,md}.

    .venv/bin/python -m bench.train_speed [--config configs/experiment.yaml] [--steps 4] [--rounds 3]
        [--cases none,chunk,adaptive_fusion] [--zero-stage N] [--quick] [--refresh-parity]
        [--save-batches FILE | --batches FILE] [--student PATH] [--note TEXT]

**Bare loop**: the student, torch AdamW, next-token cross-entropy, gradient clipping; no DeepSpeed,
no teachers. **distill**: the real `DistillRecipe` (DeepSpeed ZeRO, the loss terms, the log)
over the same micro-batches, built beforehand by the real loader (so the loader's cost is
measured on its own, in this process: `loader_s_per_batch`), with `loader_workers=0` and no
checkpoint writes. Each loop runs `--steps` optimizer steps after one warm-up step.

**Rounds.** The speed of a shared 2-core VM drifts (2× within one session on the AMX Xeon), so a
ratio is taken only between runs next to each other: each case and dtype runs `--rounds` pairs
(bare loop, distill), the order alternating (bare first in odd rounds, distill first in even ones,
so a steady drift cancels), and reports the median of the per-round ratios with their range.

**Breakdown.** Both loops time the same parts by wrapping them: the student's forward, the loss
terms (`micro_batch_losses`; the bare loop's cross-entropy), backward, the optimizer step
(clipping included), and for distill the sample weights (strategy and gate), the log's statistics
(with the gate diagnostics) and the log line; `other` is the rest of the loop. Seconds per
optimizer step by part, side by side, locate distill's overhead.

Dtypes: `float32`, `bf16_mixed` (fp32 weights, bf16 autocast, fp32 head and losses) and, for
distill only, DeepSpeed's `bfloat16` (bf16 weights, fp32 master copies). CPU model, flags and the
load average go with every figure: machines of one kind differ.

**GPU.** Where CUDA is available both loops train there, as `distill` does: the bare loop moves
its model and each batch to the GPU, and every timer synchronises the device before it reads the
clock (a CUDA call returns before its work is done). A GPU machine that has no teacher cache or no
model weights (an offline box) still measures the real loops: `--save-batches FILE` writes the
micro-batches of every case, built by the real loader from this machine's cache, and
`--batches FILE` trains on them there; `--student PATH` names a student folder with the same
config and tokenizer (the weights may be a random initialisation: a step's arithmetic does not
depend on them), and `--note` says so in the report.

**Parity.** A bf16 speed-up counts only with its parity result: the report lists every bf16
`bench.train_parity` report under `--parity-root` (bench/results by default; the parity runs
train whole learning curves, an hour and more, so they are not repeated here) with its verdict,
which `distill.dtype: auto` follows (stages/distill/engine.py: `resolve_dtype`). A parity run
that lands after the speed run is added with `--refresh-parity`: it rewrites the parity section of
`--out`'s report and keeps the speeds as they were measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import statistics
import sys
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
from data_schemas.atomic import atomic_path, write_json_atomic

CASES = (
    # (label, strategy, distill overrides)
    ("none", "none", {}),
    ("chunk", "single:{teacher}", {"objective": "chunk", "lam": 0.5}),
    ("adaptive_fusion", "adaptive", {"objective": "fusion", "gate_objective": "likelihood"}),
)
DTYPES = ("float32", "bf16_mixed", "bfloat16")
BARE_DTYPES = ("float32", "bf16_mixed")
"""The bare loop's dtypes: DeepSpeed's bf16 weights with fp32 master copies have no bare counterpart."""


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


def train_device() -> torch.device:
    """Where both loops train: the GPU when CUDA is available, as `distill` itself decides."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def clock(device: torch.device) -> float:
    """`time.perf_counter()` once the device's queued work is done (CUDA calls are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Timers:
    """Seconds spent inside wrapped callables, by name."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False
        self.device = device

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            start = clock(self.device)
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += clock(self.device) - start

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


def saved_batches_problem(saved: dict[str, Any], labels: list[str], needed: int, steps: int) -> str | None:
    """Why `saved` (from `--save-batches`) cannot serve these cases with `needed` micro-batches
    (`steps` measured steps and the warm-up), or None."""
    if missing := [label for label in labels if label not in saved["cases"]]:
        return f"no batches of case(s) {missing}: rerun --save-batches with them"
    if short := [label for label in labels if len(saved["cases"][label][0]) < needed]:
        return f"fewer than the {needed} micro-batches {steps} steps need for {short}: rerun --save-batches with --steps {steps}"
    return None


def bare_loop(config: Any, batches: list, dtype: str, steps: int) -> dict[str, Any]:
    """tok/s of plain next-token training on the batches (one warm-up step), with the breakdown."""
    from transformers import AutoModelForCausalLM

    from stages.distill import engine as ds

    d = config.distill
    device = train_device()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(config.student.path, dtype=torch.float32).to(device)
    if dtype == ds.MIXED_DTYPE:
        ds.autocast_student(model, device.type)
    elif dtype != "float32":
        raise ValueError(f"the bare loop runs float32 or {ds.MIXED_DTYPE}, got {dtype}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=d.lr, betas=(d.adam_beta1, d.adam_beta2))
    timers = Timers(device)
    model.forward = timers.wrap("student_forward", model.forward)

    def next_token_loss(logits: torch.Tensor, batch: Any) -> torch.Tensor:
        targets = batch.input_ids[:, 1:].masked_fill(~batch.loss_mask[:, :-1], -100)
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    def optimizer_step() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), d.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    loss_of = timers.wrap("micro_batch_losses", next_token_loss)
    backward = timers.wrap("backward", torch.Tensor.backward)
    step_of = timers.wrap("optimizer_step", optimizer_step)
    stream = itertools.cycle(batches)
    seconds, tokens = 0.0, 0
    for step in range(steps + 1):
        timers.active = step > 0  # step 0 warms up
        start, step_tokens = clock(device), 0
        for _ in range(d.grad_accum_steps):
            batch = next(stream).to(device)  # as the recipe moves it
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            backward(loss_of(logits, batch) / d.grad_accum_steps)
            step_tokens += batch.num_tokens
        step_of()
        if step > 0:
            seconds += clock(device) - start
            tokens += step_tokens
    return timed_result(tokens, seconds, timers)


def timed_result(tokens: int, seconds: float, timers: Timers) -> dict[str, Any]:
    """A loop's measurement: tokens, seconds, tok/s and the seconds of each part (`other`: the rest)."""
    parts = dict(timers.seconds)
    parts["other"] = seconds - sum(parts.values())
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "breakdown_s": parts}


def distill_loop(
    config: Any, batches: list, teachers: tuple[str, ...], dtype: str, steps: int
) -> dict[str, Any]:
    """tok/s of the real recipe on the batches (one warm-up step), with the breakdown."""
    import stages.distill.model as model_module
    from stages.distill.recipe import DistillRecipe, RecipeRun
    from stages.distill.strategies import parse_strategy
    from stages.world import World

    settings = dataclasses.replace(config.distill, dtype=dtype, loader_workers=0, max_steps=steps + 1)
    device = train_device()
    timers = Timers(device)
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
            first, start = stream.position, clock(device)
            recipe.train()
            seconds = clock(device) - start
            served = range(first, stream.position)  # the measured steps' batches, after the warm-up's
        finally:
            for name, fn in saved.items():
                setattr(model_module, name, fn)
            recipe.cleanup()
    assert len(served) == steps * settings.grad_accum_steps, "one batch per micro-step"
    tokens = sum(batches[i % len(batches)].num_tokens for i in served)
    # stats.add contains the gate diagnostics: report them apart.
    timers.seconds["log_statistics"] -= timers.seconds.get("gate_diagnostics", 0.0)
    return timed_result(tokens, seconds, timers)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from stages.cpu_features import cpu_summary, has_native_bf16
    from stages.distill import engine as ds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/experiment.yaml")
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per loop")
    parser.add_argument("--rounds", type=int, default=3, help="(bare, distill) pairs per case and dtype")
    parser.add_argument(
        "--cases", help=f"comma-separated cases (default: all of {', '.join(c[0] for c in CASES)})"
    )
    parser.add_argument(
        "--zero-stage", type=int, choices=(0, 1, 2, 3), help="distill's ZeRO stage (default: the config's)"
    )
    parser.add_argument("--quick", action="store_true", help="one case, one step, one round (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--parity-root", type=Path, default=RESULTS, help="where to look for bf16 train_parity.json reports"
    )
    parser.add_argument(
        "--refresh-parity", action="store_true", help="only rewrite the parity section of --out's report"
    )
    parser.add_argument(
        "--save-batches",
        type=Path,
        metavar="FILE",
        help="build every case's micro-batches from this machine's cache into FILE, then stop",
    )
    parser.add_argument(
        "--batches",
        type=Path,
        metavar="FILE",
        help="train on the micro-batches --save-batches wrote (a pickle: only a file you made) "
        "instead of building them; no teacher cache is read",
    )
    parser.add_argument("--student", help="the student folder (default: the config's)")
    parser.add_argument("--note", default="", help="a line for the report: what differs from the config")
    args = parser.parse_args(argv)
    if args.refresh_parity:
        return refresh_parity(args.out, args.parity_root)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ds.prepare_distributed_env()
    config = load_config(args.config)
    if args.zero_stage is not None:
        config = dataclasses.replace(
            config, distill=dataclasses.replace(config.distill, zero_stage=args.zero_stage)
        )
    if args.student:
        config = dataclasses.replace(config, student=dataclasses.replace(config.student, path=args.student))
    steps, rounds = (1, 1) if args.quick else (args.steps, args.rounds)
    wanted = args.cases.split(",") if args.cases else [c[0] for c in CASES]
    if unknown := set(wanted) - {c[0] for c in CASES}:
        parser.error(f"unknown case(s) {sorted(unknown)}: choose from {', '.join(c[0] for c in CASES)}")
    cases = CASES[:1] if args.quick else [c for c in CASES if c[0] in wanted]
    count = (steps + 1) * config.distill.grad_accum_steps  # micro-batches of a loop, warm-up included
    if args.batches:
        saved = torch.load(args.batches, weights_only=False)
        if problem := saved_batches_problem(saved, [c[0] for c in cases], count, steps):
            print(f"error: --batches {args.batches}: {problem}", file=sys.stderr)
            return 2
        teacher = saved["teacher"]
    else:  # the cache's modules (and polars, for its statistics) only where the cache is read
        from pipeline.curves import strongest_teacher
        from pipeline.distillation import resolve_stream_inputs

        teacher = strongest_teacher(resolve_stream_inputs(config, checksums=False))

    def config_of(strategy: str, overrides: dict[str, Any]) -> Any:
        distill = dataclasses.replace(config.distill, strategy=strategy.format(teacher=teacher), **overrides)
        return dataclasses.replace(config, distill=distill)

    if args.save_batches:
        built = {label: build_batches(config_of(s, o), count) for label, s, o in cases}
        with atomic_path(args.save_batches) as tmp:
            torch.save({"config": args.config, "teacher": teacher, "cases": built}, tmp)
        print(f"{args.save_batches}: {count} micro-batches of each of {', '.join(built)}")
        return 0
    device = train_device()
    machine = cpu_summary()
    machine["torch"] = torch.__version__
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    dtypes = DTYPES if (device.type == "cuda" or has_native_bf16()) and not args.quick else ("float32",)
    results: dict[str, Any] = {
        "config": args.config,
        "zero_stage": config.distill.zero_stage,
        "machine": machine,
        "device": device.type,
        "student": config.student.path,
        "note": args.note,
        "steps": steps,
        "rounds": rounds,
        "cases": {},
        "ratios": {},
    }
    started = time.perf_counter()
    for label, strategy, overrides in cases:
        case_config = config_of(strategy, overrides)
        distill = case_config.distill
        if args.batches:
            batches, loader_s, teachers = saved["cases"][label]
        else:
            batches, loader_s, teachers = build_batches(case_config, count)
        case: dict[str, Any] = {
            "strategy": distill.strategy,
            "overrides": overrides,
            "loader_s_per_batch": loader_s,
        }
        for dtype in dtypes:
            names = ["bare", "distill"] if dtype in BARE_DTYPES else ["distill"]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    if name == "bare":
                        measured = bare_loop(case_config, batches, dtype, steps)
                    else:
                        measured = distill_loop(case_config, batches, teachers, dtype, steps)
                    runs[name].append({**measured, "load": os.getloadavg()[0]})
                    gc.collect()  # the loop's model and optimizer, before the next one is built
            for name, measured in runs.items():
                case[f"{name}/{dtype}"] = summarise(measured, steps)
            if "bare" in runs:
                per_round = [
                    d["tokens_per_s"] / b["tokens_per_s"] for b, d in zip(runs["bare"], runs["distill"])
                ]
                results["ratios"][f"{label}/{dtype}"] = {
                    "median": statistics.median(per_round),
                    "rounds": per_round,
                }
            print(
                f"{label} {dtype}: "
                + ", ".join(f"{n} {case[f'{n}/{dtype}']['tokens_per_s']:.0f} tok/s" for n in names),
                flush=True,
            )
        results["cases"][label] = case
    results["bf16_speedup"] = {
        f"{label}/{dtype}": case[f"distill/{dtype}"]["tokens_per_s"] / case["distill/float32"]["tokens_per_s"]
        for label, case in results["cases"].items()
        for dtype in dtypes
        if dtype != "float32"
    }
    results["wall_s"] = time.perf_counter() - started
    results["load_average_end"] = list(os.getloadavg())
    results["parity"] = bf16_parity_reports(args.parity_root, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "train_speed.json", results)
    (args.out / "train_speed.md").write_text(render(results), encoding="utf-8")
    print(render(results))
    return 0


def refresh_parity(out: Path, parity_root: Path) -> int:
    """Rewrite the parity section of the report in `out` from the parity reports under
    `parity_root` now; the measured speeds stay as they are."""
    path = out / "train_speed.json"
    if not path.is_file():
        print(
            f"error: --refresh-parity needs a measured {path}: run `python -m bench.train_speed` first",
            file=sys.stderr,
        )
        return 2
    results = json.loads(path.read_text(encoding="utf-8"))
    results["parity"] = bf16_parity_reports(parity_root, out)
    write_json_atomic(path, results)
    (out / "train_speed.md").write_text(render(results), encoding="utf-8")
    print("\n".join(render_parity(results["parity"])))
    return 0


def bf16_parity_reports(root: Path, out: Path) -> list[dict[str, Any]]:
    """The verdict of every `bench.train_parity` report of a bf16 dtype under `root` (float32 ones
    compare ZeRO stages, not dtypes): arm, machine, Δ mean bits per byte by epoch, the seed noise
    floor at the best epoch, the largest |Δ| and whether parity holds."""
    reports = []
    for path in sorted(root.rglob("train_parity.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        if report["dtype"] not in DTYPES[1:]:
            continue
        floor = report.get("at_best_epoch", {}).get(f"{report['reference']}-reshuffled")
        reports.append(
            {
                "path": Path(os.path.relpath(path, out)).as_posix(),  # as the report in `out` links it
                "dtype": report["dtype"],
                "arm": report["arm"],
                "cpu": report["machine"]["cpu"],
                "delta_by_epoch": [e["deltas"]["mean bpb"] for e in report["epochs"]],
                "noise_floor": None if floor is None else floor["deltas"]["mean bpb"],
                "largest_abs_delta": max(
                    abs(d["delta"]) for e in report["epochs"] for d in e["deltas"].values()
                ),
                "parity": report["parity"],
            }
        )
    return reports


def summarise(measured: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """One loop's rounds: median tok/s, the rounds themselves, seconds per step and share by part."""
    seconds = sum(m["seconds"] for m in measured)
    parts: dict[str, float] = defaultdict(float)
    for m in measured:
        for part, s in m["breakdown_s"].items():
            parts[part] += s
    return {
        "tokens": measured[0]["tokens"],
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in measured),
        "rounds": measured,
        "step_s_by_part": {part: s / (steps * len(measured)) for part, s in parts.items()},
        "breakdown_share": {part: s / seconds for part, s in parts.items()},
        "load": max(m["load"] for m in measured),
    }


def in_order(cases: dict[str, Any]) -> list[tuple[str, Any]]:
    """The measured cases in `CASES` order (a JSON round trip sorts them by name)."""
    order = [label for label, _, _ in CASES]
    return sorted(cases.items(), key=lambda item: order.index(item[0]))


def loop_results(case: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A case's measured loops, `loop/dtype` → summary, by dtype (`DTYPES` order), bare first."""
    return [
        (f"{loop}/{dtype}", case[f"{loop}/{dtype}"])
        for dtype in DTYPES
        for loop in ("bare", "distill")
        if f"{loop}/{dtype}" in case
    ]


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Training speed: bare loop vs distill",
        "",
        f"Config `{results['config']}`, distill at ZeRO stage {results.get('zero_stage', '?')}; per case and dtype, {results['rounds']} rounds of (bare loop, "
        f"distill) next to each other, the order alternating, each loop {results['steps']} measured "
        f"optimizer steps after one warm-up step; {results.get('wall_s', 0.0):.0f} s in all.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {' '.join(machine['flags'])}; "
        f"load {' / '.join(f'{x:.1f}' for x in machine['load_average'])} at the start, "
        f"{' / '.join(f'{x:.1f}' for x in results.get('load_average_end', []))} at the end.",
        *(
            [f"Both loops on the GPU: {machine['gpu']} (torch {machine['torch']})."]
            if "gpu" in machine
            else []
        ),
        *([f"Note: {results['note']}"] if results.get("note") else []),
        "",
        "| case | loop | dtype | tok/s (median) | rounds | distill / bare (median) | per round | max load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, case in in_order(results["cases"]):
        for key, value in loop_results(case):
            loop, dtype = key.split("/")
            ratio = results["ratios"].get(f"{label}/{dtype}") if loop == "distill" else None
            median = "" if ratio is None else f"**{ratio['median']:.2f}**"
            per_round = "" if ratio is None else ", ".join(f"{x:.2f}" for x in ratio["rounds"])
            rounds = ", ".join(f"{r['tokens_per_s']:.0f}" for r in value["rounds"])
            lines.append(
                f"| {label} | {loop} | {dtype} | {value['tokens_per_s']:.0f} | {rounds} | {median} | "
                f"{per_round} | {value['load']:.1f} |"
            )
    speedups = [
        f"{label}/{dtype} {results['bf16_speedup'][f'{label}/{dtype}']:.2f}×"
        for label, _ in in_order(results["cases"])
        for dtype in DTYPES
        if f"{label}/{dtype}" in results["bf16_speedup"]
    ]
    lines += [
        "",
        "bf16 speed-up of distill over its float32 (medians, not paired): " + ", ".join(speedups)
        if speedups
        else "bf16 was not measured: "
        + (
            "this CPU has no native bf16 (AMX or AVX512_BF16), it would be emulated."
            if "gpu" not in machine and not machine.get("native_bf16", True)
            else "a --quick run measures float32 only."
        ),
        "",
        *render_parity(results.get("parity", [])),
        "## Seconds per optimizer step, by part (all rounds)",
        "",
    ]
    for label, case in in_order(results["cases"]):
        lines.append(
            f"- loader (in-process, before training), {label}: {case['loader_s_per_batch']:.3f} s per micro-batch"
        )
    columns = [
        (f"{label} {key}", value["step_s_by_part"])
        for label, case in in_order(results["cases"])
        for key, value in loop_results(case)
    ]
    parts = sorted({part for _, by_part in columns for part in by_part})
    lines += [
        "",
        "| part | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for part in [*parts, "total"]:
        cells = [
            sum(by_part.values()) if part == "total" else by_part.get(part, 0.0) for _, by_part in columns
        ]
        lines.append(f"| {part} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def render_parity(reports: list[dict[str, Any]]) -> list[str]:
    """The bf16 parity section: each report's Δ against float32 by epoch and its verdict."""
    lines = ["## bf16 parity (`bench.train_parity`: held-out bits per byte, paired per document)", ""]
    if not reports:
        return [*lines, "No bf16 parity report was found: `distill.dtype: auto` keeps float32 on CPUs.", ""]
    lines += [
        "| report | dtype | arm | CPU | Δ mean bpb by epoch (± paired SE) | seed noise floor | largest \\|Δ\\| | parity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        deltas = ", ".join(f"{d['delta']:+.4f} ± {d['se']:.4f}" for d in r["delta_by_epoch"])
        floor = (
            ""
            if r["noise_floor"] is None
            else f"{r['noise_floor']['delta']:+.4f} ± {r['noise_floor']['se']:.4f}"
        )
        lines.append(
            f"| [{r['path'].replace('.json', '.md')}]({r['path'].replace('.json', '.md')}) | {r['dtype']} | {r['arm']} | {r['cpu']} | "
            f"{deltas} | {floor} | {r['largest_abs_delta']:.4f} | {'holds' if r['parity'] else '**does not hold**'} |"
        )
    lines += [
        "",
        "Parity (every epoch |Δ mean| ≤ 2 paired SE, every domain ≤ 3 SE) is what `distill.dtype: auto` "
        "asks of bf16 before choosing it on a CPU; "
        + (
            "it holds in every report."
            if all(r["parity"] for r in reports)
            else "where it does not hold, `auto` trains in float32 and bf16 stays one setting away."
        ),
        "",
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
