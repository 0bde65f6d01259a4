"""Extraction fidelity and speed of ``extract.dtype: bf16_mixed`` against float32 on the real
teachers (issue 22, item 3). Writes bench/results/extract_fidelity.{json,md}.

    .venv/bin/python -m bench.extract_fidelity [--config configs/experiment.yaml] [--samples N]
        [--teachers NAME ...] [--dtypes float32 bf16_mixed [bfloat16]] [--out bench/results]

For each teacher of the config (default: the three demo teachers of configs/experiment.yaml),
the first train corpus shard (or its first ``--samples`` samples) is tokenised as extraction
tokenises it, then scored by the transformers backend once per dtype, float32 first, one model in
memory at a time, in this one process, with the config's top_k, max_tokens and batch_tokens and
the tokenizer's space mask (so σ is compared too). Each dtype is compared with float32 row by row:

- top-k set agreement: rows whose k ids are the same set; top-1 agreement: same first id;
- |Δ target logprob| (mean, max): the actual next token's logprob, what ``ce``, bits per byte
  and chunk log-likelihoods are built from;
- |Δ log σ| (mean, max): the space-probability column;
- tokens/s of scoring (wall clock, after one warm-up call on a short sequence, model load apart)
  and the speed-up over float32.

For scale: the ``quant`` cache layout rounds every stored logprob by up to 1/64 = 0.0156 nat. The
CPU model, its vector flags, whether it has native bf16 (``stages/cpu_features.py``) and the load
average before each part go with the figures: machines of one kind differ, and figures taken with
other model jobs on the same cores are not measurements.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "experiment.yaml"
REFERENCE = "float32"
QUANT_ROUNDING = 1.0 / 64
WARMUP_TOKENS = 64


def teacher_inputs(config: Any, teacher: Any, samples: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    """(token id sequences of the first train shard, or its first ``samples`` samples, as
    extraction tokenises them; the tokenizer's space mask)."""
    from pipeline.extraction import TEACHER_SPLIT, load_teacher_tokenizer, prepare_shared_corpus
    from stages.align.token_text import build_token_table, space_mask
    from stages.extract.extract import tokenize_shard
    from stages.prepare.prepare import split_shards

    corpus = prepare_shared_corpus(config)
    tokenizer = load_teacher_tokenizer(teacher, "transformers")
    shard = split_shards(corpus.directory, TEACHER_SPLIT)[0]
    add_special = True if teacher.add_special_tokens is None else teacher.add_special_tokens
    _, _, tokenized = tokenize_shard(
        shard, tokenizer, add_special_tokens=add_special, max_tokens=config.extract.max_tokens
    )
    return [t.ids for t in tokenized[:samples]], space_mask(build_token_table(tokenizer))


def score(folder: Path, dtype: str, seqs: list[np.ndarray], mask: np.ndarray, extract: Any) -> dict[str, Any]:
    """One dtype's rows of ``seqs`` and its timings; the model is freed before returning."""
    from stages.extract.backends.transformers_backend import TransformersBackend

    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    backend = TransformersBackend(
        folder,
        top_k=extract.top_k,
        dtype=dtype,
        batch_tokens=extract.batch_tokens,
        max_tokens=extract.max_tokens,
        space_mask=mask,
    )
    loaded = time.perf_counter()
    backend.topk_logprobs([seqs[0][:WARMUP_TOKENS]])  # one-off kernel selection, not scoring
    warm = time.perf_counter()
    rows = backend.topk_logprobs(seqs)
    seconds = time.perf_counter() - warm
    backend.close()
    del backend
    gc.collect()
    tokens = sum(len(s) for s in seqs)
    return {
        "rows": rows,
        "load_s": loaded - started,
        "score_s": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "load_average_before": load_average,
    }


def compare_rows(reference: list[Any], rows: list[Any]) -> dict[str, float | int]:
    """Row-by-row agreement of ``rows`` with ``reference`` (both: ``TopkRows`` per sample)."""
    ref_ids = np.concatenate([r.topk_ids for r in reference])
    ids = np.concatenate([r.topk_ids for r in rows])
    same_set = (np.sort(ids, axis=1) == np.sort(ref_ids, axis=1)).all(axis=1)
    target = np.abs(
        np.concatenate([r.target_logprobs for r in rows])
        - np.concatenate([r.target_logprobs for r in reference])
    )
    space = np.abs(
        np.concatenate([r.space_logprobs for r in rows])
        - np.concatenate([r.space_logprobs for r in reference])
    )
    return {
        "positions": len(ids),
        "topk_set_agreement": float(same_set.mean()),
        "top1_agreement": float((ids[:, 0] == ref_ids[:, 0]).mean()),
        "mean_abs_target_diff": float(target.mean()),
        "max_abs_target_diff": float(target.max()),
        "mean_abs_space_logprob_diff": float(space.mean()),
        "max_abs_space_logprob_diff": float(space.max()),
    }


def bench_teacher(config: Any, teacher: Any, dtypes: list[str], samples: int | None) -> dict[str, Any]:
    from stages.model_source import model_folder

    seqs, mask = teacher_inputs(config, teacher, samples)
    folder = model_folder(teacher.path)
    parts = {dtype: score(folder, dtype, seqs, mask, config.extract) for dtype in dtypes}
    reference = parts[REFERENCE]
    out: dict[str, Any] = {"model": str(teacher.path), "samples": len(seqs), "tokens": reference["tokens"]}
    for dtype, part in parts.items():
        result = {k: v for k, v in part.items() if k != "rows"}
        if dtype != REFERENCE:
            result.update(compare_rows(reference["rows"], part["rows"]))
            result["speedup_over_float32"] = part["tokens_per_s"] / reference["tokens_per_s"]
        out[dtype] = result
    return out


def write_markdown(result: dict[str, Any], path: Path) -> None:
    m = result["machine"]
    k = result["top_k"]
    lines = [
        "# Extraction fidelity: mixed dtype against float32",
        "",
        f"Config `{result['config']}`, transformers backend, k = {k}, max_tokens {result['max_tokens']}, "
        f"{'first ' + str(result['samples']) + ' samples' if result['samples'] else 'one corpus shard'} per teacher. "
        f"CPU: {m['cpu']} ({m['cores']} cores; {' '.join(m['flags']) or 'no avx/amx flags'}; native bf16: "
        f"{'yes' if m['native_bf16'] else 'no'}; torch capability {m['torch_cpu_capability']}, "
        f"{m['torch_threads']} threads). Load average at start {m['load_average'][0]:.1f}, at end "
        f"{result['load_average_at_end'][0]:.1f}.",
        "",
        f"| teacher | dtype | positions | top-{k} sets equal | top-1 equal | mean / max abs Δ target (nat) "
        "| mean / max abs Δ log σ (nat) | tokens/s | speed-up | load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in result["teachers"].items():
        for dtype in result["dtypes"]:
            p = t[dtype]
            if dtype == REFERENCE:
                lines.append(
                    f"| {name} | {dtype} | {t['tokens']} tokens | (reference) | | | | {p['tokens_per_s']:.1f} | 1.00 "
                    f"| {p['load_average_before']:.1f} |"
                )
                continue
            lines.append(
                f"| {name} | {dtype} | {p['positions']} | {p['topk_set_agreement']:.1%} | {p['top1_agreement']:.1%} "
                f"| {p['mean_abs_target_diff']:.4f} / {p['max_abs_target_diff']:.3f} "
                f"| {p['mean_abs_space_logprob_diff']:.4f} / {p['max_abs_space_logprob_diff']:.3f} "
                f"| {p['tokens_per_s']:.1f} | {p['speedup_over_float32']:.2f} | {p['load_average_before']:.1f} |"
            )
    lines += [
        "",
        f"For scale: the `quant` cache layout rounds every stored logprob by up to {QUANT_ROUNDING:.4f} nat. "
        "tokens/s: scoring only (model load and one warm-up call apart).",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--samples", type=int, default=None, help="first N samples of the shard (default: all)"
    )
    parser.add_argument(
        "--teachers", nargs="*", default=None, help="teacher names (default: all of the config)"
    )
    parser.add_argument("--dtypes", nargs="+", default=[REFERENCE, "bf16_mixed"], help="float32 first")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.dtypes[0] != REFERENCE:
        parser.error(f"--dtypes must start with {REFERENCE}, the reference the others are compared with")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipeline.config import load_config
    from stages.cpu_features import cpu_summary

    config = load_config(args.config)
    teachers = [config.teacher(name) for name in args.teachers] if args.teachers else list(config.teachers)
    machine = cpu_summary()
    result: dict[str, Any] = {
        "config": str(args.config),
        "dtypes": args.dtypes,
        "top_k": config.extract.top_k,
        "max_tokens": config.extract.max_tokens,
        "samples": args.samples,
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "teachers": {},
    }
    for teacher in teachers:
        print(f"extract fidelity: {teacher.name} ...", flush=True)
        result["teachers"][teacher.name] = bench_teacher(config, teacher, args.dtypes, args.samples)
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extract_fidelity.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "extract_fidelity.md")
    print((args.out / "extract_fidelity.md").read_text())


if __name__ == "__main__":
    main()
