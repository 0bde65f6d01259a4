"""Does knowledge flow? Distilling from the strongest demo teacher against plain training, per
sparse target kind, with paired statistics → bench/results/targets.{json,md}.

    python -m bench.targets_bench [--runs NAME,...] [--config configs/targets.yaml]

Every run trains the demo student (SmolLM2-135M) from the same cached shards for the same number
of optimizer steps on the same samples (equal tokens; `configs/targets.yaml`) and changes only
what its row of `RUNS` names. Each export and the untrained student are scored on every held-out
document; the table gives, per domain and on the mean over domains, Δ bits per byte ± the paired
standard error against the untrained student and against `none` (CLM only) at the same learning
rate (stages/evaluate/paired_delta.py). A run whose export exists is not trained again and scored
models are cached, so adding a row costs one run.

Per target kind it also reports what the stored target is: bytes per token of its cache, and on
real text scored by a small teacher with its exact softmax (SmolLM2, every position), the KL of
the stored target to the teacher's full distribution over the target's own partition (support
∪ rest) and the total variation between the two on the full vocabulary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = "configs/targets.yaml"
DRAWS = 12
"""Tokens drawn per position for the sampled target (Anshumann et al.: ~12 match full KD)."""


@dataclass(frozen=True)
class Run:
    name: str
    overrides: tuple[str, ...]
    baseline: str | None
    """The `none` run this one is compared with (same learning rate and steps); None for a `none`."""
    about: str


def _kd(name: str, target: str, lr: str, lam: str = "0.0", extra: tuple[str, ...] = ()) -> Run:
    draws = (f"extract.draws={DRAWS}",) if target == "sampled" else ()
    return Run(
        name,
        (
            "distill.strategy=single:qwen-coder",
            f"distill.lam={lam}",
            f"distill.target={target}",
            f"distill.lr={lr}",
            *draws,
            *extra,
        ),
        f"none_lr{lr}",
        f"qwen-coder only, λ = {lam}, {target} target, lr {lr}",
    )


def _none(lr: str) -> Run:
    return Run(f"none_lr{lr}", ("distill.strategy=none", f"distill.lr={lr}"), None, f"CLM only, lr {lr}")


RUNS = {
    r.name: r
    for r in (
        _none("5e-5"),
        _kd("qwen_renorm_lr5e-5", "renormalised", "5e-5"),
        _kd("qwen_residual_lr5e-5", "residual", "5e-5"),
        _kd("qwen_sampled_lr5e-5", "sampled", "5e-5"),
        _kd("qwen_sampled_lam0.5_lr5e-5", "sampled", "5e-5", lam="0.5"),
        _none("2e-4"),
        _kd("qwen_sampled_lr2e-4", "sampled", "2e-4"),
    )
}
"""Every setting measured (bench/results/targets.md), in table order; add a row to try another."""


def machine() -> dict:
    flags = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if f" {f}" in flags],
        "loadavg_at_end": os.getloadavg(),
    }


def train(run: Run, config_path: str) -> tuple[Path, dict]:
    """The run's export (trained unless it exists) and its training facts."""
    from pipeline.config import load_config
    from pipeline.distillation import distill_from_config

    config = load_config(config_path, ["runs_dir=runs/targets", f"name={run.name}", *run.overrides])
    run_dir = Path(config.runs_dir) / config.name
    export = run_dir / "export"
    facts_path = run_dir / "bench_facts.json"
    if (export / "config.json").is_file() and facts_path.is_file():
        return export, json.loads(facts_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run restarts: its facts would lie
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = distill_from_config(config, progress=False)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    metrics = result.final_metrics
    facts = {
        "seconds": round(seconds, 1),
        "steps": result.steps,
        "tokens": metrics.get("tokens"),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "final_metrics": metrics,
    }
    facts_path.write_text(json.dumps(facts, indent=2, default=float))
    return result.export_dir, facts


def cache_bytes_per_token(config_path: str, overrides: tuple[str, ...]) -> dict:
    """Bytes per teacher token of every teacher cache the config (with overrides) reads."""
    from data_schemas.manifest import read_manifest
    from pipeline.config import load_config
    from pipeline.distillation import resolve_stream_inputs

    config = load_config(config_path, list(overrides))
    inputs = resolve_stream_inputs(config, checksums=False)
    out = {}
    for name, key in inputs.teacher_keys.items():
        directory = Path(config.cache_dir) / "teachers" / key / inputs.corpus_key
        manifest = read_manifest(directory)
        tokens = sum(e.tokens for e in manifest.shards)
        size = sum(e.bytes for e in manifest.shards)
        out[name] = {"key": key, "tokens": tokens, "bytes": size, "bytes_per_token": size / max(tokens, 1)}
    return out


def target_fidelity(model_folder: str, texts: list[str], top_k: int = 10, draws: int = DRAWS) -> dict:
    """Per target kind, mean over positions of KL(stored target ‖ teacher) on the target's partition
    (support ∪ rest; the renormalised top-k has no rest, so it is −log Σ_top-k p) and of the total
    variation between the stored target's support values and the teacher on the full vocabulary
    (the rest bucket's total counted as matching: only its shape is unknown)."""
    import torch
    from transformers import AutoModelForCausalLM

    from data_schemas.teacher_shard import LOGPROB_STEP
    from stages.extract.draws import count_draws, draw_tokens, row_uniforms
    from stages.tokenization import load_tokenizer, tokenize_many_with_ends

    tokenizer = load_tokenizer(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, local_files_only=True)
    model.eval()
    sums = {k: {"kl": 0.0, "tv": 0.0, "support": 0.0} for k in ("renormalised", "residual", "sampled")}
    positions = 0
    with torch.inference_mode():
        for tok in tokenize_many_with_ends(tokenizer, texts, add_special_tokens=True, max_tokens=512):
            ids = torch.from_numpy(tok.ids.astype(np.int64))[None]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)  # [R, V]
            p = logp.exp()
            rows = p.shape[0]
            positions += rows
            top_lp = logp.topk(top_k, dim=-1).values
            mass = top_lp.exp().sum(-1)
            # renormalised: t = p_S / mass on S, 0 elsewhere.
            sums["renormalised"]["kl"] += float((-mass.log()).sum())
            sums["renormalised"]["tv"] += float((1 - mass).sum())  # ½(Σ_S |p/m − p| + Σ_¬S p)
            sums["renormalised"]["support"] += float(mass.sum())
            # residual: the stored (1/32-nat grid) top-k values and rest = 1 − Σ them.
            stored = torch.exp(torch.round(top_lp / LOGPROB_STEP) * LOGPROB_STEP)
            stored = stored / torch.clamp(stored.sum(-1, keepdim=True), min=1.0)
            rest = (1 - stored.sum(-1)).clamp(min=1e-300)
            true_rest = (1 - mass).clamp(min=1e-300)
            kl = (stored * (stored / top_lp.exp()).log()).sum(-1) + rest * (rest / true_rest).log()
            sums["residual"]["kl"] += float(kl.sum())
            sums["residual"]["tv"] += float(
                0.5 * ((stored - top_lp.exp()).abs().sum(-1) + (rest - true_rest).abs()).sum()
            )
            sums["residual"]["support"] += float(mass.sum())
            # sampled: N draws from the full softmax, target c / N on the distinct drawn ids.
            uniforms = torch.from_numpy(row_uniforms(tok.ids, draws))
            distinct, counts = count_draws(draw_tokens(logp, uniforms).numpy())
            t = torch.from_numpy(counts.astype(np.float64) / draws)
            p_at = p.gather(-1, torch.from_numpy(distinct.astype(np.int64)))
            real = t > 0
            kl = torch.where(real, t * (t / p_at.clamp(min=1e-300)).log(), torch.zeros_like(t)).sum(-1)
            sums["sampled"]["kl"] += float(kl.sum())
            # TV on the full vocabulary: ½(Σ_drawn |t − p| + Σ_undrawn p).
            drawn_p = (p_at * real).sum(-1)
            sums["sampled"]["tv"] += float(0.5 * (((t - p_at).abs() * real).sum(-1) + (1 - drawn_p)).sum())
            sums["sampled"]["support"] += float(drawn_p.sum())
    return {
        "teacher": model_folder,
        "positions": positions,
        "top_k": top_k,
        "draws": draws,
        **{
            kind: {
                "kl_to_teacher": v["kl"] / positions,
                "total_variation": v["tv"] / positions,
                "teacher_mass_on_support": v["support"] / positions,
            }
            for kind, v in sums.items()
        },
    }


def fidelity_texts(config_path: str, n: int = 8) -> list[str]:
    """The first `n` training samples of every domain: real text of each kind."""
    import pyarrow.parquet as pq

    from pipeline.config import load_config
    from pipeline.corpus import prepare_from_config
    from stages.prepare.prepare import split_shards

    prepared = prepare_from_config(load_config(config_path))
    per_domain: dict[str, list[str]] = {}
    for shard in split_shards(prepared.directory, "train"):
        for row in pq.read_table(shard, columns=["domain", "text"]).to_pylist():
            per_domain.setdefault(row["domain"], []).append(row["text"])
    return [t for texts in per_domain.values() for t in texts[:n]]


def _cell(d) -> str:
    return f"{d.delta:+.4f} ± {d.se:.4f}" if not math.isnan(d.se) else f"{d.delta:+.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--skip-fidelity", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}: choose from {', '.join(RUNS)}")
    runs = [RUNS[n] for n in names]
    for run in runs:  # a run's baseline is trained (and compared) with it
        if run.baseline and run.baseline not in names:
            runs.insert(0, RUNS[run.baseline])
            names.insert(0, run.baseline)

    from pipeline.config import load_config
    from pipeline.evaluation import evaluate_from_config
    from stages.evaluate.paired_delta import MEAN_BPB, compare_score_records

    exports, facts = {}, {}
    for run in runs:
        exports[run.name], facts[run.name] = train(run, args.config)
        print(f"{run.name}: {facts[run.name]['seconds']} s", flush=True)

    config = load_config(args.config, ["name=targets"])
    started = time.perf_counter()
    evaluation = evaluate_from_config(
        config,
        [exports[r.name] for r in runs],
        target=Path(config.student.path),
        labels=["target", *[r.name for r in runs]],
    )
    eval_seconds = time.perf_counter() - started
    records = {label: entry["scores"] for label, entry in evaluation.payload["models"].items()}
    eval_facts = {label: entry.get("facts", {}) for label, entry in evaluation.payload["models"].items()}

    rows = {}
    for run in runs:
        vs_target = compare_score_records(records[run.name], records["target"])
        vs_none = compare_score_records(records[run.name], records[run.baseline]) if run.baseline else None
        rows[run.name] = {
            "about": run.about,
            "overrides": list(run.overrides),
            "baseline": run.baseline,
            "train": facts[run.name],
            "vs_target": {u: d.to_dict() for u, d in vs_target.items()},
            "vs_none": {u: d.to_dict() for u, d in vs_none.items()} if vs_none else None,
        }

    kinds = {
        "renormalised/residual (top-k, k = 10)": cache_bytes_per_token(args.config, ()),
        f"sampled (N = {DRAWS})": cache_bytes_per_token(
            args.config, (f"extract.draws={DRAWS}", "distill.target=sampled")
        )
        if any("extract.draws" in o for r in runs for o in r.overrides)
        else None,
    }
    fidelity = (
        None if args.skip_fidelity else target_fidelity(config.student.path, fidelity_texts(args.config))
    )
    payload = {
        "config": args.config,
        "machine": machine(),
        "evaluation": {"seconds": round(eval_seconds, 1), "models": eval_facts},
        "runs": rows,
        "cache_bytes_per_token": kinds,
        "target_fidelity": fidelity,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "targets.json").write_text(json.dumps(payload, indent=2, default=float))
    (RESULTS / "targets.md").write_text(render_markdown(payload, runs, MEAN_BPB))
    print((RESULTS / "targets.md").read_text())
    return 0


def render_markdown(payload: dict, runs: list[Run], mean_unit: str) -> str:
    from stages.evaluate.paired_delta import PairedDelta

    domains = sorted(
        {u for r in payload["runs"].values() for u in r["vs_target"] if u != mean_unit},
    )
    m = payload["machine"]
    lines = [
        "# Does knowledge flow? Single-teacher distillation vs plain training, per target kind",
        "",
        f"`python -m bench.targets_bench` on {m['cpu']} ({m['cores']} cores; {', '.join(m['flags'])}); "
        f"config `{payload['config']}`. Every run: same samples, same optimizer steps, fp32. "
        "Δ = bits per byte of the run minus that of the reference, on every held-out document "
        "(negative: better), ± the paired standard error (documents as observations; "
        "mean: the mean of the four domain deltas).",
        "",
        "## Against `none` at the same learning rate",
        "",
        "| run | " + " | ".join(d.removeprefix("bpb/") for d in domains) + " | mean | z (mean) |",
        "|---|" + "---|" * (len(domains) + 2),
    ]
    for run in runs:
        row = payload["runs"][run.name]
        if not row["vs_none"]:
            continue
        cells = [_cell(PairedDelta.from_dict(row["vs_none"][d])) for d in [*domains, mean_unit]]
        z = row["vs_none"][mean_unit]["z"]
        lines.append(f"| `{run.name}` | " + " | ".join(cells) + f" | {z:+.1f} |")
    lines += [
        "",
        "## Against the untrained student (target)",
        "",
        "| run | " + " | ".join(d.removeprefix("bpb/") for d in domains) + " | mean | train s | load |",
        "|---|" + "---|" * (len(domains) + 3),
    ]
    for run in runs:
        row = payload["runs"][run.name]
        cells = [_cell(PairedDelta.from_dict(row["vs_target"][d])) for d in [*domains, mean_unit]]
        t = row["train"]
        lines.append(
            f"| `{run.name}` | " + " | ".join(cells) + f" | {t['seconds']:.0f} | "
            f"{t['loadavg_1min_before']}–{t['loadavg_1min_after']} |"
        )
    lines += ["", "Runs: " + "; ".join(f"`{r.name}`: {r.about}" for r in runs), ""]
    lines += ["## The stored targets", "", "| target | cache bytes/token |", "|---|---|"]
    for kind, caches in payload["cache_bytes_per_token"].items():
        if caches:
            for teacher, c in caches.items():
                lines.append(f"| {kind}, {teacher} | {c['bytes_per_token']:.1f} ({c['tokens']} tokens) |")
    fid = payload["target_fidelity"]
    if fid:
        lines += [
            "",
            f"Fidelity on {fid['positions']} positions of real text (teacher {fid['teacher']}, exact softmax): "
            "KL(stored target ‖ teacher) over the target's partition (support ∪ rest bucket), nats per "
            "position; total variation on the full vocabulary; the teacher's mass on the support.",
            "",
            "| target | KL | TV | teacher mass on support |",
            "|---|---|---|---|",
        ]
        for kind in ("renormalised", "residual", "sampled"):
            v = fid[kind]
            lines.append(
                f"| {kind} | {v['kl_to_teacher']:.4f} | {v['total_variation']:.4f} | {v['teacher_mass_on_support']:.3f} |"
            )
    lines += ["", f"Evaluation: {payload['evaluation']['seconds']:.0f} s for every model above.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
