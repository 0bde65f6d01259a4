"""The end product of a distill run: a plain Hugging Face folder plus the gate and the statistics.

    export/
      config.json, model.safetensors, generation_config.json   student.save_pretrained
      tokenizer.json, tokenizer_config.json, ...               copied byte for byte from the student
      gate.pt                                                  gate state_dict + what it was trained on
      fusion_stats.json                                        summary of the run's metrics.jsonl
      config.yaml                                              the resolved config it was trained with
      README.md                                                the model card (model_card.py)

`gate.pt` is a dict: `state_dict` plus `gate_info` (strategy, teachers, features, τ). Its
`teachers` and `features` fix the gate's shape, so it rebuilds as
`SelectionGate(len(teachers), loader.feature_count(features))` (pipeline/experiment.py does).

Loadable by `AutoModelForCausalLM.from_pretrained(export)` and by vLLM like any HF folder. The
folder is written under a temporary name and renamed into place, so a crash leaves no half export.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_schemas.atomic import fsync_dir, write_json_atomic
from stages.distill.metrics import read_metrics
from stages.distill.model_card import write_model_card

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def write_export(
    export_dir: str | Path,
    student: nn.Module,
    student_state: dict[str, torch.Tensor],
    tokenizer_dir: str | Path,
    gate_state: dict[str, torch.Tensor] | None,
    gate_info: dict[str, Any],
    fusion_stats: dict[str, Any],
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write the export folder atomically (rank 0 only; gather `student_state` on every rank first).

    Args:
        student: the trained student (its config and class decide the saved format).
        student_state: its full state dict (`engine.gathered_state_dict`), saved instead of the
            possibly partitioned live parameters.
        tokenizer_dir: the student's folder; its tokenizer files are copied unchanged.
        gate_state: the trained gate's state dict, or None for strategies without a gate.
        gate_info: what the gate was trained on (teachers, features, τ, strategy), saved beside it;
            `teachers` and `features` (the `distill.gate_features` name) must be there to rebuild it.
        fusion_stats: `summarize_run(...)`.
        extra_files: further text files of the export, name → content (the run's `config.yaml`,
            from pipeline/distillation.py), written inside the same atomic rename.
    """
    assert gate_state is None or {"teachers", "features"} <= gate_info.keys(), "gate.pt could not be rebuilt"
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(f"{export_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    student.save_pretrained(tmp, state_dict=student_state, safe_serialization=True)
    copied = [name for name in TOKENIZER_FILES if (Path(tokenizer_dir) / name).is_file()]
    if "tokenizer.json" not in copied:
        raise RuntimeError(f"the student folder {tokenizer_dir} has no tokenizer.json to export")
    for name in copied:
        shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    torch.save({"state_dict": gate_state, **gate_info}, tmp / "gate.pt")
    write_json_atomic(tmp / "fusion_stats.json", fusion_stats)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    write_model_card(tmp)
    shutil.rmtree(export_dir, ignore_errors=True)
    tmp.rename(export_dir)
    fsync_dir(export_dir.parent)
    return export_dir


def summarize_run(
    metrics_path: str | Path, teacher_names: Sequence[str], extra: dict[str, Any]
) -> dict[str, Any]:
    """Whole-run statistics from the log windows of `metrics.jsonl` (weighted by their counts).

    Each record covers the micro-batches since the previous one, so sums over records cover the
    run; rates are re-weighted by samples (mean w, presence) or student rows (alignment).
    """
    records = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    samples = sum(r["samples"] for r in records)
    rows = sum(r["student_rows"] for r in records)
    hist = [sum(values) for values in zip(*(r["gate/selected_hist"] for r in records), strict=True)]

    def by(weight: str, key: str) -> float:
        total = sum(r[weight] for r in records)
        return sum(r[key] * r[weight] for r in records) / total if total else 0.0

    # The run's loss terms (loss_terms.py): every record of a run logs the same ones.
    loss_keys = [key for key in (records[-1] if records else {}) if key.startswith("loss/")]
    per_teacher = {
        name: {
            "mean_w": by("samples", f"gate/mean_w/{name}"),
            "present_rate": by("samples", f"align/present_rate/{name}"),
            "aligned_rate": by("student_rows", f"align/aligned_rate/{name}"),
            "selected_rate": by("samples", f"gate/selected_rate/{name}"),
        }
        for name in teacher_names
    }
    return {
        **extra,
        "samples": samples,
        "tokens": sum(r["tokens"] for r in records),
        "student_rows": rows,
        "selected_count_hist": hist,
        "teachers": per_teacher,
        "final": records[-1] if records else {},
        "mean_loss": {key.removeprefix("loss/"): by("samples", key) for key in loss_keys},
    }
