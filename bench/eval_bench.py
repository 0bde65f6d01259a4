"""Evaluate benchmark: the hand-written scorer against lm-evaluation-harness, side by side on the
same model and held-out documents. Writes bench/results/eval.{json,md}.

    .venv/bin/python -m bench.eval_bench [--model models/smollm2-135m-instruct] [--config configs/demo.yaml]

Both parts score what `polyfuse evaluate` scores for the config: the first
``evaluate.max_samples_per_domain`` held-out samples of each domain (bits per byte) and the
multiple-choice sets built from the held-out split, with the config's max_tokens, batch_tokens,
dtype and threads:

- ``native``: the test oracle tests/stages/evaluate/hand_scorer.py, ``score_texts`` (padded
  batches of at most batch_tokens tokens) and ``score_items`` (one context pass per item, its key
  / value cache shared by the choices), on a model loaded with transformers;
- ``lm_eval``: stages/evaluate/harness.py ``score_model``, i.e. lm-eval's HFLM and
  ``simple_evaluate`` on the rolling and multiple-choice task YAMLs (batch size
  batch_tokens // max_tokens).

Both run in this one process, native first, each loading its own model; times are wall-clock,
model load (and lm-eval's one-off task index, ~10 s) apart. Agreement is reported too:
per-document |Δ log-likelihood| (nats) and per-item agreement of the acc_norm choice. The load
average is recorded because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "smollm2-135m-instruct"
CONFIG = ROOT / "configs" / "demo.yaml"


def machine() -> dict[str, Any]:
    from bench.distill_bench import machine_info

    return {**machine_info(), "lm_eval": version("lm_eval")}


def run_native(folder: Path, settings: Any, samples: list[tuple[str, Any]], sets: Any) -> dict[str, Any]:
    """The hand-written scorer: per-document (bits, bytes), per-item acc_norm picks, seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    from stages.evaluate import mc_sets
    from stages.evaluate.bits_per_byte import domain_bits_per_byte
    from stages.tokenization import load_tokenizer
    from tests.stages.evaluate.hand_scorer import score_items, score_texts

    started = time.perf_counter()
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, settings.dtype)).eval()
    loaded = time.perf_counter()
    scored = score_texts(
        model,
        tokenizer,
        [p.text for _, p in samples],
        max_tokens=settings.max_tokens,
        batch_tokens=settings.batch_tokens,
    )
    bpb = domain_bits_per_byte([d for d, _ in samples], [p.doc_id for _, p in samples], scored)
    bpb_done = time.perf_counter()
    correct = {
        f"{task}/{r.item_id}": float(r.predictions["acc_norm"] == r.gold)
        for task, path in sets.tasks.items()
        for r in score_items(model, tokenizer, mc_sets.read_task(path), max_tokens=settings.max_tokens)
    }
    return {
        "load_s": loaded - started,
        "bpb_s": bpb_done - loaded,
        "mc_s": time.perf_counter() - bpb_done,
        "tokens": sum(s.n_tokens for s in scored),
        "bpb": {u: s.value for u, s in bpb.items()},
        "documents": {u: dict(s.observations) for u, s in bpb.items()},
        "acc_norm_correct": correct,
    }


def run_lm_eval(
    folder: Path, settings: Any, samples: list[tuple[str, Any]], sets: Any, work: Path
) -> dict[str, Any]:
    """lm-eval through stages/evaluate/harness.py: the same numbers and seconds."""
    from stages.evaluate.harness import score_model
    from stages.evaluate.rolling_tasks import write_rolling_task

    by_domain: dict[str, list] = {}
    for domain, passage in samples:
        by_domain.setdefault(domain, []).append(passage)
    rolling = {d: write_rolling_task(work / "tasks", d, ps) for d, ps in by_domain.items()}
    scores, facts = score_model(
        folder,
        rolling_tasks=rolling,
        mc_tasks={task: path.with_suffix(".yaml") for task, path in sets.tasks.items()},
        dtype=settings.dtype,
        batch_size=max(1, settings.batch_tokens // settings.max_tokens),
        max_length=settings.max_tokens,
        threads=settings.threads,
    )
    return {
        "task_index_s": facts["task_index_seconds"],
        "load_s": facts["load_seconds"],
        "bpb_s": facts["bpb_seconds"],
        "mc_s": facts["mc_seconds"],
        "windowed_samples": facts["bpb_windowed_samples"],
        "bpb": {u: s.value for u, s in scores.items() if s.metric == "bpb"},
        "documents": {u: dict(s.observations) for u, s in scores.items() if s.metric == "bpb"},
        "acc_norm_correct": {
            f"{u.split('/', 1)[1]}/{key}": y
            for u, s in scores.items()
            if s.metric == "acc_norm"
            for key, (y, _) in s.observations.items()
        },
    }


def agreement(native: dict[str, Any], lm_eval: dict[str, Any]) -> dict[str, Any]:
    """Per-document |Δ nats| and |Δ bytes|, and acc_norm agreement per item."""
    deltas, byte_mismatches = [], 0
    for unit, docs in native["documents"].items():
        for doc, (bits, n_bytes) in docs.items():
            theirs = lm_eval["documents"].get(unit, {}).get(doc)
            if theirs is None:
                byte_mismatches += 1
                continue
            deltas.append(abs(bits - theirs[0]) * math.log(2))
            byte_mismatches += int(n_bytes != theirs[1])
    items = native["acc_norm_correct"].keys() & lm_eval["acc_norm_correct"].keys()
    return {
        "documents": len(deltas),
        "max_abs_nats_diff": max(deltas, default=math.nan),
        "mean_abs_nats_diff": sum(deltas) / len(deltas) if deltas else math.nan,
        "documents_with_other_bytes": byte_mismatches,
        "items": len(items),
        "acc_norm_agreement": (
            sum(native["acc_norm_correct"][i] == lm_eval["acc_norm_correct"][i] for i in items) / len(items)
            if items
            else math.nan
        ),
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    m, parts, agree = result["machine"], result["parts"], result["agreement"]
    lines = [
        "# Evaluate benchmark: hand-written scorer vs lm-evaluation-harness",
        "",
        f"{result['model']} ({result['settings']['dtype']}), {result['samples']} held-out samples "
        f"({parts['native']['tokens']} tokens) of {result['config']}, {result['items']} multiple-choice items, "
        f"max_tokens {result['settings']['max_tokens']}, batch_tokens {result['settings']['batch_tokens']}, "
        f"lm-eval {m['lm_eval']}. CPU: {m['cpu']} ({m['cores']} cores; {', '.join(m['cpu_flags'])}), "
        f"torch threads {m['torch_threads']}, load average at start {m['load_average'][0]:.1f}, "
        f"at end {result['load_average_at_end'][0]:.1f}.",
        "",
        "| scorer | task index s | load s | bits per byte s | tokens/s | multiple choice s |",
        "|---|---|---|---|---|---|",
    ]
    tokens = parts["native"]["tokens"]
    for name, part in parts.items():
        lines.append(
            f"| {name} | {part.get('task_index_s', 0.0):.1f} | {part['load_s']:.1f} | {part['bpb_s']:.1f} | {tokens / max(part['bpb_s'], 1e-9):.0f} | "
            f"{part['mc_s']:.1f} |"
        )
    lines += ["", "| unit | native bpb | lm-eval bpb |", "|---|---|---|"]
    for unit, value in parts["native"]["bpb"].items():
        lines.append(f"| {unit} | {value:.4f} | {parts['lm_eval']['bpb'].get(unit, math.nan):.4f} |")
    lines += [
        "",
        f"Agreement: {agree['documents']} documents, max |Δ log-likelihood| {agree['max_abs_nats_diff']:.2e} nats "
        f"(mean {agree['mean_abs_nats_diff']:.2e}), {agree['documents_with_other_bytes']} with other byte counts; "
        f"acc_norm correct/wrong agrees on {agree['acc_norm_agreement']:.3f} of {agree['items']} items. "
        f"lm-eval scored {parts['lm_eval']['windowed_samples']} samples in more than one window.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of eval.json and eval.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} is missing: run `make setup` first")

    import torch

    from pipeline.config import load_config
    from pipeline.corpus import prepare_from_config
    from pipeline.evaluation import build_mc_sets, heldout_passages

    config = load_config(args.config)
    settings = config.evaluate
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    prepared = prepare_from_config(config)
    passages = heldout_passages(prepared)
    sets = build_mc_sets(settings, prepared, passages, Path(config.cache_dir))
    samples = [(d, p) for d, ps in passages.items() for p in ps[: settings.max_samples_per_domain]]
    info = machine()
    print(f"eval bench: native scorer on {len(samples)} samples ...", flush=True)
    native = run_native(args.model, settings, samples, sets)
    print("eval bench: lm-eval ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lm_eval = run_lm_eval(args.model, settings, samples, sets, Path(tmp))
    result = {
        "model": str(args.model),
        "config": str(args.config),
        "settings": {k: getattr(settings, k) for k in ("max_tokens", "batch_tokens", "dtype", "threads")},
        "samples": len(samples),
        "items": len(native["acc_norm_correct"]),
        "machine": info,
        "load_average_at_end": os.getloadavg(),
        "parts": {"native": native, "lm_eval": lm_eval},
        "agreement": agreement(native, lm_eval),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "eval.md")
    print((args.out / "eval.md").read_text())


if __name__ == "__main__":
    main()
