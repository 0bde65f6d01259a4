"""Smoke test of bench/extract_fidelity.py on a tiny teacher (seconds): both dtypes scored, the
mixed one compared with float32, the machine recorded."""

import json
from pathlib import Path

import yaml

from bench import extract_fidelity
from tests.pipeline.test_extraction import write_corpus
from tests.stages.extract.conftest import build_tiny_teacher


def test_extract_fidelity_compares_the_mixed_dtype_with_float32(tmp_path: Path) -> None:
    teacher = build_tiny_teacher(tmp_path / "tiny")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cache_dir": str(tmp_path / "cache"),
                "corpus": {
                    "sources": [{"path": str(write_corpus(tmp_path)), "domain": "prose"}],
                    "samples_per_shard": 8,
                    "max_chars": 300,
                    "heldout_fraction": 0.0,
                },
                "teachers": [{"name": "tiny", "path": str(teacher)}],
                "extract": {"backend": "transformers", "top_k": 10, "max_tokens": 128, "batch_tokens": 1024},
            }
        )
    )
    extract_fidelity.main(["--config", str(config), "--samples", "5", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "extract_fidelity.json").read_text())
    tiny = result["teachers"]["tiny"]
    assert tiny["samples"] == 5 and tiny["tokens"] > 50
    mixed = tiny["bf16_mixed"]
    assert mixed["positions"] == tiny["tokens"] - 5  # n − 1 rows per sample
    assert 0.8 <= mixed["top1_agreement"] <= 1.0 and 0.0 <= mixed["topk_set_agreement"] <= 1.0
    assert 0.0 < mixed["mean_abs_target_diff"] <= mixed["max_abs_target_diff"] < 0.5
    assert 0.0 < mixed["mean_abs_space_logprob_diff"] < 0.1
    assert tiny["float32"]["tokens_per_s"] > 0 and mixed["speedup_over_float32"] > 0
    machine = result["machine"]
    assert machine["cpu"] and isinstance(machine["native_bf16"], bool) and "load_average" in machine
    markdown = (tmp_path / "out" / "extract_fidelity.md").read_text()
    assert "| tiny | bf16_mixed |" in markdown and "native bf16" in markdown
