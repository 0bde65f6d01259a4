"""Distill benchmark (docs/design.md §12): memory of the sparse fusion loss, step time of fusion vs
CLM-only, loader throughput vs the trainer's consumption (with each `distill.aligner`). Writes
bench/results/distill.{json,md}.

    .venv/bin/python -m bench.distill_bench [--quick]

**Memory method.** Each case runs in a fresh subprocess with glibc's mmap threshold pinned at
64 KiB (`MALLOC_MMAP_THRESHOLD_`), so every tensor above that size is its own mapping, given back
to the kernel when freed; the kernel's peak-RSS counter (VmHWM) is reset through
`/proc/self/clear_refs` once the inputs exist, and the case reports VmHWM − VmRSS-at-reset:
the physical peak of the computation, on top of its inputs. The teacher side is also given
exactly, as the bytes of the tensors each approach holds per micro-batch.

**Time method.** Wall and CPU time of whole optimizer steps (forward, losses, backward, ZeRO-2
step) through the real DeepSpeed engine (fp32, one process), the two strategies back to back on
the same batch in alternating order (ABBA); the median of the per-round ratios is reported, which
cancels batch length and most of the drift of other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# docs/design.md §12 shapes.
MEM_T, MEM_V, MEM_K, MEM_TOPK = 2048, 32000, 5, 10


# ------------------------------------------------------------------------------------------ memory
def _status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _status()["VmRSS"]


def _sparse_inputs(batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random teacher supports with overlaps, absent positions and a fused-weight table."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MEM_V, (batch, MEM_K, MEM_T, MEM_TOPK), generator=g)
    probs = torch.rand(batch, MEM_K, MEM_T, MEM_TOPK, generator=g)
    probs = probs / probs.sum(-1, keepdim=True)
    available = torch.rand(batch, MEM_K, MEM_T, generator=g) < 0.8
    weights = torch.softmax(torch.randn(batch, MEM_K, generator=g), -1)
    return {
        "support_ids": ids,
        "support_probs": probs,
        "available": available,
        "weights": weights,
        "input_ids": torch.randint(0, MEM_V, (batch, MEM_T), generator=g),
        "loss_mask": torch.ones(batch, MEM_T, dtype=torch.bool),
    }


def sparse_fusion_clm(logits: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The project's loss, the very function the training module runs (`micro_batch_losses`):
    one logsumexp and one gather of the K·k supports and the CLM targets."""
    from stages.distill.batch import FusionBatch
    from stages.distill.model import micro_batch_losses
    from stages.distill.settings import DistillSettings

    batch = FusionBatch(
        sample_ids=(),
        input_ids=x["input_ids"],
        attention_mask=torch.ones_like(x["input_ids"]),
        loss_mask=x["loss_mask"],
        support_ids=x["support_ids"],
        support_probs=x["support_probs"],
        rest_mass=torch.zeros(x["available"].shape),
        available=x["available"],
        features=torch.ones_like(x["weights"]).unsqueeze(-1),
        present=torch.ones_like(x["weights"], dtype=torch.bool),
        aligned_rows=torch.zeros(MEM_K, dtype=torch.int64),
        student_rows=torch.tensor(0),
        mapped_mass=torch.zeros(MEM_K, dtype=torch.float64),
        bits_per_byte=torch.ones_like(x["weights"]),
        span_loglik=torch.zeros((*x["weights"].shape, 0)),
        span_mask=torch.zeros((x["weights"].shape[0], 0), dtype=torch.bool),
        span_bytes=torch.zeros(x["weights"].shape[0], dtype=torch.int64),
        row_chunk=torch.full(x["input_ids"].shape, -1, dtype=torch.int64),
        chunk_space=torch.zeros((*x["weights"].shape, 0)),
        chunk_end_row=torch.zeros((x["weights"].shape[0], 0), dtype=torch.int64),
    )
    terms = {"clm": 0.9, "fusion": 0.1, "feedback": 0.5}
    return micro_batch_losses(logits, batch, terms, DistillSettings(), weights=x["weights"]).losses.total


def dense_fusion_clm(logits: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference code's way: a dense [B, T, V] distribution per teacher, fused densely, and a
    second full log-softmax of the student."""
    from stages.distill.fusion import fuse_position_weights

    batch, length, vocab = logits.shape
    dense = torch.zeros(batch, MEM_K, length, vocab).scatter_add_(-1, x["support_ids"], x["support_probs"])
    w = fuse_position_weights(x["weights"], x["available"])
    target = (w.unsqueeze(-1) * dense).sum(1)
    logp = torch.log_softmax(logits.float(), -1)
    fuse = -(target * logp).sum(-1).mean()
    clm = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x["input_ids"][:, 1:].reshape(-1))
    return 0.9 * clm + 0.1 * fuse


def plain_ce(logits: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a Hugging Face causal LM computes with `labels`: shifted cross-entropy."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x["input_ids"][:, 1:].reshape(-1))


LOSSES = {"sparse": sparse_fusion_clm, "dense": dense_fusion_clm, "ce": plain_ce}


def _tiny_model(vocab: int) -> torch.nn.Module:
    """The tests' tiny Llama (tests/tiny_models.py), with a vocabulary of ``vocab``."""
    from transformers import LlamaForCausalLM

    from tests.tiny_models import tiny_llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab, max_position_embeddings=MEM_T))


def probe_memory(case: str) -> dict[str, Any]:
    """One memory case, in this (fresh) process. `loss:NAME` = loss forward + backward on given
    logits; `step:NAME` = student forward + loss + backward; `teacher:sparse|dense` = building the
    teacher-side tensors of one micro-batch."""
    kind, name = case.split(":")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = _sparse_inputs()
    if kind == "teacher":
        base = _reset_peak()
        if name == "dense":
            held = [
                torch.zeros(1, MEM_K, MEM_T, MEM_V).scatter_add_(-1, x["support_ids"], x["support_probs"])
            ]
        else:
            held = [x["support_ids"].clone(), x["support_probs"].clone(), x["available"].clone()]
        nbytes = sum(t.numel() * t.element_size() for t in held)
        return {"case": case, "tensor_bytes": nbytes, "peak_bytes": _status()["VmHWM"] - base}
    if kind == "loss":
        logits = torch.randn(1, MEM_T, MEM_V, requires_grad=True)
        base = _reset_peak()
        LOSSES[name](logits, x).backward()
        return {"case": case, "peak_bytes": _status()["VmHWM"] - base, "logits_bytes": logits.numel() * 4}
    model = _tiny_model(MEM_V)
    base = _reset_peak()
    logits = model(input_ids=x["input_ids"]).logits
    LOSSES[name](logits, x).backward()
    return {"case": case, "peak_bytes": _status()["VmHWM"] - base}


def measure_memory() -> dict[str, Any]:
    cases = [
        "teacher:sparse",
        "teacher:dense",
        "loss:ce",
        "loss:sparse",
        "loss:dense",
        "step:ce",
        "step:sparse",
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    out: dict[str, Any] = {}
    for case in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.distill_bench", "--probe", case],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out[case] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "shapes": {"T": MEM_T, "V": MEM_V, "K": MEM_K, "k": MEM_TOPK, "B": 1},
        "cases": out,
        "teacher_side_ratio_tensor_bytes": out["teacher:dense"]["tensor_bytes"]
        / out["teacher:sparse"]["tensor_bytes"],
        "teacher_side_ratio_measured": out["teacher:dense"]["peak_bytes"]
        / max(out["teacher:sparse"]["peak_bytes"], 1),
        "loss_peak_ratio_dense_over_sparse": out["loss:dense"]["peak_bytes"]
        / out["loss:sparse"]["peak_bytes"],
        "loss_peak_ratio_sparse_over_ce": out["loss:sparse"]["peak_bytes"] / out["loss:ce"]["peak_bytes"],
        "step_peak_ratio_sparse_over_ce": out["step:sparse"]["peak_bytes"] / out["step:ce"]["peak_bytes"],
    }


# ------------------------------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    import deepspeed  # noqa: F401  (version only)
    import transformers

    cpu = "unknown"
    flags: list[str] = []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "unknown":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")))
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": sys.modules["deepspeed"].__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------- data for the loop
def demo_inputs(cache_dir: Path) -> tuple[Any, Any, str]:
    """(config, stream inputs, source) on the demo corpus and the demo teachers' tokenizers.

    Uses the real demo caches when `make extract` filled them; otherwise extracts the demo corpus
    with the `fake` backend under the real tokenizers into `cache_dir` (alignment and vocab maps
    are then real, the teacher distributions are not — which changes neither time nor memory).
    """
    from pipeline.cache_check import TeacherCacheError
    from pipeline.config import load_config
    from pipeline.distillation import resolve_stream_inputs
    from pipeline.extraction import run_extraction

    config = load_config(ROOT / "configs" / "demo.yaml")
    try:
        return config, resolve_stream_inputs(config), "real demo caches (make extract)"
    except (TeacherCacheError, ValueError) as e:
        print(f"demo caches not usable ({str(e)[:120]}…): extracting with the fake backend", flush=True)
    teachers = [
        {
            "name": t.name,
            "path": str(ROOT / "models" / "tokenizers" / Path(t.path).name),
            "backend": "fake",
            "max_shards": t.max_shards,
        }
        for t in config.teachers
    ]
    from pipeline.config import config_from_dict

    raw = dataclasses.asdict(config)
    raw.update(cache_dir=str(cache_dir), teachers=teachers)
    raw["corpus"]["sources"] = [{**src, "path": str(ROOT / src["path"])} for src in raw["corpus"]["sources"]]
    config = config_from_dict(raw, "bench")
    run_extraction(config, progress=False)
    return (
        config,
        resolve_stream_inputs(config),
        "fake-backend caches of the demo corpus under the real demo tokenizers",
    )


# ------------------------------------------------------------------------------------ step time
def measure_step_time(config: Any, inputs: Any, *, rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Whole optimizer steps of `adaptive` vs `none` on the demo student, same batches."""
    from transformers import AutoModelForCausalLM

    from pipeline.distillation import build_stream
    from stages.distill import engine as ds
    from stages.distill.loader import feature_count
    from stages.distill.model import FusionModule
    from stages.distill.recipe import ADAM_EPS
    from stages.distill.strategies import parse_strategy

    d = config.distill
    ds.prepare_distributed_env()
    stream = build_stream(config, inputs, rank=0, world_size=1)
    batches = list(itertools.islice(iter(stream), warmup + rounds))
    names = [t.name for t in config.teachers]
    engines = {}
    for strategy in ("adaptive", "none"):
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_pretrained(config.student.path, dtype=torch.float32)
        module = FusionModule(
            student,
            parse_strategy(strategy, names),
            len(names),
            d,
            num_features=feature_count(d.gate_features),
        )
        optimizer = ds.build_optimizer(
            module.student_parameters(),
            module.gate_parameters(),
            lr=d.lr,
            gate_lr=d.gate_lr,
            weight_decay=0.0,
            betas=(d.adam_beta1, d.adam_beta2),
            eps=ADAM_EPS,
        )
        scheduler = ds.cosine_with_warmup(optimizer, warmup_steps=1, max_steps=1000)
        config_ds = ds.build_deepspeed_config(
            micro_batch_size=d.micro_batch_size,
            grad_accum_steps=1,
            zero_stage=2,
            dtype="float32",
            grad_clip=1.0,
        )
        engines[strategy] = ds.initialize_engine(module, optimizer, scheduler, config_ds)
    times: dict[str, list[float]] = {name: [] for name in engines}
    cpu_times: dict[str, list[float]] = {name: [] for name in engines}
    for i, batch in enumerate(batches):
        # ABBA order: neither strategy always runs first (caches, other jobs' load drifting).
        order = list(engines) if i % 2 == 0 else list(reversed(engines))
        for name in order:
            engine = engines[name]
            start, cpu_start = time.perf_counter(), time.process_time()
            output = engine(batch)
            engine.backward(output.losses.total)
            engine.step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    tokens = [b.num_tokens for b in batches[warmup:]]
    adaptive, none = _median(times["adaptive"]), _median(times["none"])
    # Same batch, back to back: the per-round ratio cancels the batch length and most of the
    # drift of other jobs' load; its median is the number to read on a shared machine.
    paired = [a / n for a, n in zip(times["adaptive"], times["none"], strict=True)]
    paired_cpu = [a / n for a, n in zip(cpu_times["adaptive"], cpu_times["none"], strict=True)]
    return {
        "student": str(config.student.path),
        "micro_batch_size": d.micro_batch_size,
        "max_seq_tokens": d.max_seq_tokens,
        "teachers": names,
        "rounds": rounds,
        "tokens_per_batch": tokens,
        "seconds": times,
        "cpu_seconds": cpu_times,
        "median_step_s": {"adaptive": adaptive, "none": none},
        "ratio_adaptive_over_none": adaptive / none,
        "paired_ratios": paired,
        "paired_ratio_median": _median(paired),
        "paired_cpu_ratio_median": _median(paired_cpu),
        # CPU time of the process (all its threads): less sensitive to other jobs on the machine.
        "ratio_cpu_adaptive_over_none": _median(cpu_times["adaptive"]) / _median(cpu_times["none"]),
        "trainer_samples_per_s": d.micro_batch_size / adaptive,
    }


# --------------------------------------------------------------------------------------- loader
def measure_dtw_loader(config: Any, *, batches: int) -> dict[str, Any]:
    """`measure_loader` under `distill.aligner=dtw` (the same shards, each teacher's token texts
    added by the pipeline), with the aligned-row rate beside it: what DTW costs and keeps."""
    from pipeline.distillation import resolve_stream_inputs

    dtw = dataclasses.replace(config, distill=dataclasses.replace(config.distill, aligner="dtw"))
    return measure_loader(dtw, resolve_stream_inputs(dtw, checksums=False), batches=batches)


def measure_loader(config: Any, inputs: Any, *, batches: int, workers: int = 2) -> dict[str, Any]:
    """Aligned samples per second of the real DataLoader (workers processes), measured alone, and
    the share of student rows each teacher aligns."""
    from torch.utils.data import DataLoader

    from pipeline.distillation import build_stream

    stream = build_stream(config, inputs, rank=0, world_size=1)
    loader = iter(DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4))
    for _ in range(2 * workers):  # worker start-up and tokenizer loading
        next(loader)
    start = time.perf_counter()
    samples = tokens = rows = 0
    aligned = torch.zeros(len(inputs.teachers), dtype=torch.int64)
    for _ in range(batches):
        batch = next(loader)
        samples += len(batch.sample_ids)
        tokens += batch.num_tokens
        aligned += batch.aligned_rows
        rows += int(batch.student_rows)
    seconds = time.perf_counter() - start
    del loader
    return {
        "workers": workers,
        "batches": batches,
        "samples": samples,
        "tokens": tokens,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "aligned_rate": {
            t.name: int(a) / max(rows, 1) for t, a in zip(inputs.teachers, aligned, strict=True)
        },
    }


# ----------------------------------------------------------------------------------------- report
def write_markdown(results: dict[str, Any], path: Path) -> None:
    m, st, ld = results["memory"], results["step_time"], results["loader"]
    c = m["cases"]
    mib = 1 << 20
    lines = [
        "# distill benchmark",
        "",
        f"{results['machine']['cpu']} ({results['machine']['cores']} cores, flags: "
        f"{' '.join(results['machine']['cpu_flags']) or 'none'}), torch {results['machine']['torch']}, "
        f"transformers {results['machine']['transformers']}, deepspeed {results['machine']['deepspeed']}; "
        f"load average at start {results['machine']['load_average'][0]:.1f} (a shared machine: times are noisy).",
        f"Data: {results['data']}.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| step time `adaptive` / `none` (demo student, ZeRO-2 fp32, {st['rounds']} paired rounds) | "
        f"{st['paired_ratio_median']:.3f}× median of paired ratios (range "
        f"{min(st['paired_ratios']):.2f}–{max(st['paired_ratios']):.2f}; CPU time {st['paired_cpu_ratio_median']:.3f}×; "
        f"median steps {st['median_step_s']['adaptive']:.1f} s vs {st['median_step_s']['none']:.1f} s) | ≤ 1.10× |",
        f"| teacher side, dense [B,K,T,V] / top-k support (tensor bytes) | {m['teacher_side_ratio_tensor_bytes']:,.0f}× "
        f"({c['teacher:dense']['tensor_bytes'] / mib:,.0f} MiB vs {c['teacher:sparse']['tensor_bytes'] / mib:.2f} MiB) | ≥ 1,000× |",
        f"| teacher side, measured peak RSS | {m['teacher_side_ratio_measured']:,.0f}× | ≥ 1,000× |",
        f"| fusion + CLM loss peak / plain CE loss peak (given logits) | {m['loss_peak_ratio_sparse_over_ce']:.2f}× "
        f"({c['loss:sparse']['peak_bytes'] / mib:,.0f} vs {c['loss:ce']['peak_bytes'] / mib:,.0f} MiB) | — |",
        f"| whole step (tiny Llama, V = {MEM_V}) fusion + CLM / plain CE | {m['step_peak_ratio_sparse_over_ce']:.2f}× "
        f"({c['step:sparse']['peak_bytes'] / mib:,.0f} vs {c['step:ce']['peak_bytes'] / mib:,.0f} MiB) | ≤ 1.15× |",
        f"| dense reference loss peak / ours | {m['loss_peak_ratio_dense_over_sparse']:.1f}× "
        f"({c['loss:dense']['peak_bytes'] / mib:,.0f} MiB) | — |",
        f"| loader ({ld['workers']} workers) / trainer consumption | {results['loader_over_trainer']:.1f}× "
        f"({ld['samples_per_s']:.1f} vs {st['trainer_samples_per_s']:.2f} samples/s) | ≥ 20× |",
        *_dtw_rows(results),
        "",
        f"Memory shapes: T = {MEM_T}, V = {MEM_V}, K = {MEM_K}, k = {MEM_TOPK}, B = 1, fp32. "
        + __doc__.split("**Memory method.**")[1].split("**Time method.**")[0].strip().replace("\n", " "),
        "",
        "Time: " + __doc__.split("**Time method.**")[1].strip().replace("\n", " "),
        "Loader: the real DataLoader over the stream (tokenise, align every teacher, collate), measured "
        "alone on the same cores; the trainer's consumption is micro-batch size / adaptive step time.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _dtw_rows(results: dict[str, Any]) -> list[str]:
    """The `distill.aligner=dtw` row of the table (none in results from before it was measured)."""
    if "loader_dtw" not in results:
        return []
    ld, dtw = results["loader"], results["loader_dtw"]
    rates = "; ".join(
        f"{name} {dtw['aligned_rate'][name]:.1%} vs {rate:.1%}"
        for name, rate in ld.get("aligned_rate", {}).items()
        if name in dtw["aligned_rate"]
    )
    return [
        f"| loader, `distill.aligner=dtw` / `offsets` ({dtw['workers']} workers) | "
        f"{dtw['samples_per_s'] / ld['samples_per_s']:.2f}× ({dtw['samples_per_s']:.1f} vs "
        f"{ld['samples_per_s']:.1f} samples/s; aligned rows {rates or 'not measured'}) | — |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--cache-dir", default=str(ROOT / "cache" / "bench-distill"))
    parser.add_argument(
        "--parts",
        default="memory,loader,loader_dtw,step",
        help="comma-separated parts to measure; the others are kept from the previous distill.json",
    )
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe_memory(args.probe)), flush=True)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = set(args.parts.split(","))
    previous = RESULTS / "distill.json"
    results: dict[str, Any] = (
        json.loads(previous.read_text())
        if previous.exists() and parts != {"memory", "loader", "loader_dtw", "step"}
        else {}
    )
    results["machine"] = machine_info()
    if "memory" in parts:
        print("memory …", flush=True)
        results["memory"] = measure_memory()
    if parts & {"loader", "loader_dtw", "step"}:
        config, inputs, source = demo_inputs(Path(args.cache_dir))
        results["data"] = source
    if "loader" in parts:
        print("loader …", flush=True)
        results["loader"] = measure_loader(config, inputs, batches=10 if args.quick else 40)
    if "loader_dtw" in parts:
        print("loader, aligner=dtw …", flush=True)
        results["loader_dtw"] = measure_dtw_loader(config, batches=10 if args.quick else 40)
    if "step" in parts:
        print("step time …", flush=True)
        results["step_time"] = measure_step_time(config, inputs, rounds=2 if args.quick else 8)
    results["loader_over_trainer"] = (
        results["loader"]["samples_per_s"] / results["step_time"]["trainer_samples_per_s"]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, RESULTS / "distill.md")
    print((RESULTS / "distill.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
