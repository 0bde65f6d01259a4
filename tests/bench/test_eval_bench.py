"""Smoke test of bench/eval_bench.py on a tiny model: both scorers run and agree."""

import json
from pathlib import Path

from bench import eval_bench
from tests.pipeline.test_evaluation import workspace  # noqa: F401 (pytest fixture)
from tests.stages.evaluate.tiny_model import one_torch_thread  # noqa: F401 (autouse fixture)


def test_eval_bench_times_both_scorers_and_they_agree(workspace: Path, tmp_path: Path) -> None:  # noqa: F811
    eval_bench.main(
        [
            "--model",
            str(workspace / "fused"),
            "--config",
            str(workspace / "config.yaml"),
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["parts"]) == {"native", "lm_eval"}
    for part in result["parts"].values():
        assert (
            part["bpb_s"] > 0
            and part["mc_s"] > 0
            and set(part["bpb"]) == {"bpb/code", "bpb/math", "bpb/prose"}
        )
    agree = result["agreement"]
    assert agree["documents"] >= 3 and agree["documents_with_other_bytes"] == 0
    assert agree["max_abs_nats_diff"] < 1e-3
    assert agree["items"] == result["items"] > 0 and agree["acc_norm_agreement"] == 1.0
    assert result["machine"]["cpu"] and "load_average" in result["machine"]
    assert "| lm_eval |" in (tmp_path / "eval.md").read_text()
