import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline.evaluation as evaluation
from pipeline.config import config_from_dict
from pipeline.corpus import prepare_from_config
from stages.evaluate import harness
from tests.stages.evaluate.test_harness import local_mc_task
from tests.stages.evaluate.tiny_model import one_torch_thread, save_model_folder  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[2]
EVALUATE = {
    "max_samples_per_domain": 3,
    "max_tokens": 512,
    "batch_tokens": 1024,
    "mc_items_per_task": 3,
    "cloze_context_chars": 60,
    "cloze_continuation_chars": 30,
}


def _write_jsonl(path: Path, texts: list[str]) -> dict:
    path.write_text(
        "".join(json.dumps({"id": f"{path.stem}-{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    return {"path": str(path), "domain": path.stem}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    words = ["river", "stone", "light", "shadow", "garden", "window", "letter", "morning", "silver", "quiet"]
    prose = [" ".join(words[(d + i) % 10] + str(d) for i in range(40)) for d in range(12)]
    code = [f"def f{d}(x):\n    y = x * {d} + 1\n    return y if y > {d} else -y\n" * 3 for d in range(12)]
    math = [
        "".join(f"Question: What is {d} times {i}?\nAnswer: {d * i + 1}\n\n" for i in range(2, 8))
        for d in range(12)
    ]
    sources = [
        _write_jsonl(root / f"{name}.jsonl", texts)
        for name, texts in [("prose", prose), ("code", code), ("math", math)]
    ]
    save_model_folder(root / "target", seed=0)
    save_model_folder(root / "fused", seed=1)
    config = {
        "cache_dir": str(root / "cache"),
        "runs_dir": str(root / "runs"),
        "name": "t",
        "student": {"path": str(root / "target")},
        "corpus": {"sources": sources, "max_chars": 300, "heldout_fraction": 0.5},
        "evaluate": EVALUATE,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_evaluate_writes_table_json_and_interference(workspace: Path, monkeypatch) -> None:
    config = config_from_dict(yaml.safe_load((workspace / "config.yaml").read_text()))
    result = evaluation.evaluate_from_config(config, [workspace / "target", workspace / "fused"])
    payload = json.loads((result.directory / "eval.json").read_text())
    assert payload["target"] == "target"
    units = payload["models"]["fused"]["scores"]
    assert {"bpb/prose", "bpb/code", "bpb/math"} <= set(units)
    for task in ("cloze_prose", "cloze_code", "cloze_math", "math_answer", "humaneval"):
        assert {f"acc/{task}", f"acc_norm/{task}", f"acc_bytes/{task}"} <= set(units), task
        assert (Path(payload["mc_sets"]["directory"]) / f"{task}.yaml").is_file()
    assert set(payload["interference"]) == {"fused"}
    assert payload["interference"]["fused"]["compared_units"] == 3 + 5
    assert "| model" in (result.directory / "eval.md").read_text()
    assert "bpb/prose" in result.table and "KI" in result.table
    # Paired deltas against the target, per unit and on the mean over domains; no `none` here.
    paired = payload["paired"]["against"]
    assert list(paired) == ["target"] and list(paired["target"]) == ["fused"]
    prose = paired["target"]["fused"]["bpb/prose"]
    assert prose["n"] == units["bpb/prose"]["n"] and prose["se"] >= 0 and 0 <= prose["p_value"] <= 1
    assert prose["delta"] == pytest.approx(
        units["bpb/prose"]["value"] - payload["models"]["target"]["scores"]["bpb/prose"]["value"]
    )
    assert {"mean bpb", "acc_norm/cloze_code", "acc/cloze_code"} <= set(paired["target"]["fused"])
    assert "Paired Δ vs the target `target`" in (result.directory / "eval.md").read_text()
    assert "Paired Δ vs the target" in result.table
    assert payload["models"]["fused"]["facts"]["scorer"] == harness.scorer_version()
    assert payload["models"]["fused"]["facts"]["bpb_samples"] == 3 * EVALUATE["max_samples_per_domain"]

    # A second evaluation finds every score in the cache: nothing is loaded or scored again.
    def refuse(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(evaluation, "score_model", refuse)
    again = evaluation.evaluate_from_config(config, [workspace / "fused"], target=workspace / "target")
    assert again.payload["models"]["fused"]["scores"] == payload["models"]["fused"]["scores"]

    # Another scorer (an upgraded lm-eval) is another cache key: the cached scores are not reused.
    monkeypatch.setattr(evaluation, "scorer_version", lambda: "lm-eval 99.0")
    with pytest.raises(AssertionError, match="scored again"):
        evaluation.evaluate_from_config(config, [workspace / "fused"], target=workspace / "target")


def test_every_heldout_document_is_paired_with_max_samples_null(workspace: Path) -> None:
    config = config_from_dict(yaml.safe_load((workspace / "config.yaml").read_text()))
    config = dataclasses.replace(
        config,
        name="all",
        evaluate=dataclasses.replace(config.evaluate, max_samples_per_domain=None, tasks=[]),
    )
    result = evaluation.evaluate_from_config(
        config, [workspace / "target", workspace / "fused"], labels=["target", "none"]
    )
    paired = result.payload["paired"]["against"]
    # A model labelled `none` is a second reference: each model against the other, both ways.
    assert list(paired) == ["target", "none"]
    assert list(paired["target"]) == ["none"] and list(paired["none"]) == ["target"]
    passages = evaluation.heldout_passages(prepare_from_config(config))
    for domain, domain_passages in passages.items():
        forward, backward = (
            paired["target"]["none"][f"bpb/{domain}"],
            paired["none"]["target"][f"bpb/{domain}"],
        )
        assert forward["n"] == len({p.doc_id for p in domain_passages}) >= 2, domain
        assert forward["delta"] == -backward["delta"] and forward["se"] == pytest.approx(backward["se"])
    mean = paired["target"]["none"]["mean bpb"]
    assert mean["n"] == sum(len({p.doc_id for p in v}) for v in passages.values())
    assert "Paired Δ vs `none`" in (result.directory / "eval.md").read_text()


def _polyfuse(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def test_cli_evaluate_on_a_tiny_model_folder(workspace: Path) -> None:
    config = str(workspace / "config.yaml")
    out = _polyfuse(
        "evaluate",
        "--config",
        config,
        str(workspace / "fused"),
        "name=cli",
        "evaluate.tasks=[cloze]",
        cwd=workspace,
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads((workspace / "runs" / "cli" / "eval" / "eval.json").read_text())
    assert set(payload["models"]) == {"fused"} and payload["target"] is None
    assert payload["models"]["fused"]["facts"]["scorer"].startswith("lm-eval ")
    assert "acc_norm/cloze_code" in payload["models"]["fused"]["scores"]
    assert "bpb/math" in out.stdout

    bad = _polyfuse("evaluate", "--config", config, str(workspace), cwd=workspace)
    assert bad.returncode == 2
    assert "is not a Hugging Face model folder" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_evaluate_adds_a_named_lm_eval_task_and_refuses_a_missing_one(workspace: Path) -> None:
    config = str(workspace / "config.yaml")
    task = local_mc_task(workspace / "named", "toy_named_mc")
    out = _polyfuse(
        "evaluate",
        "--config",
        config,
        str(workspace / "fused"),
        "name=named",
        "evaluate.tasks=[]",
        f"evaluate.lm_eval_tasks=[{task}]",
        cwd=workspace,
    )
    assert out.returncode == 0, out.stderr
    scores = json.loads((workspace / "runs" / "named" / "eval" / "eval.json").read_text())["models"]["fused"][
        "scores"
    ]
    assert scores["acc/toy_named_mc"]["n"] == 5 and "bpb/prose" in scores

    # hellaswag is installed with lm-eval, its data is not here (offline, nothing cached).
    missing = _polyfuse(
        "evaluate",
        "--config",
        config,
        str(workspace / "fused"),
        "evaluate.lm_eval_tasks=[hellaswag]",
        cwd=workspace,
    )
    assert missing.returncode == 2, missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in missing.stderr
    assert "lm-eval task hellaswag is not available offline" in lines[0]
    assert "remove hellaswag from evaluate.lm_eval_tasks" in lines[0]


def _config(workspace: Path, name: str):
    config = config_from_dict(yaml.safe_load((workspace / "config.yaml").read_text()))
    return dataclasses.replace(config, name=name)


def test_a_tokenizer_without_bos_or_eos_is_refused_before_the_model_loads(
    workspace: Path, tmp_path: Path
) -> None:
    """lm-eval predicts a text's first token from BOS, else EOS: with neither, it once failed with
    a TypeError inside lm-eval after the model loaded."""
    folder = save_model_folder(tmp_path / "no-bos-eos", seed=2)
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "bos_token": None, "eos_token": None}))
    with pytest.raises(ValueError) as err:
        evaluation.evaluate_from_config(_config(workspace, "nobos"), [folder])
    assert str(err.value).startswith(f"the tokenizer in {folder} has neither a BOS nor an EOS token")


def test_a_folder_without_tokenizer_files_says_so(workspace: Path, tmp_path: Path) -> None:
    folder = save_model_folder(tmp_path / "no-tokenizer", seed=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ValueError) as err:
        evaluation.evaluate_from_config(_config(workspace, "notok"), [folder])
    assert f"no tokenizer files (tokenizer.json / tokenizer_config.json) in {folder}" in str(err.value)
    assert "sentencepiece" not in str(err.value)


@pytest.mark.parametrize("damage", ['{"facts": {}}', '{"facts": {}, "scores": {"bpb/prose": {"unit"'])
def test_a_damaged_score_cache_entry_is_named_discarded_and_scored_again(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """Valid JSON without `scores` (once a KeyError) and a file cut short (once a JSON error that
    named no file): named in a warning, removed, and the model scored again."""
    from stages.evaluate.unit_score import UnitScore

    config = _config(workspace, "damaged")  # its own score cache key: only this test's entries
    config = dataclasses.replace(
        config, evaluate=dataclasses.replace(config.evaluate, max_samples_per_domain=2)
    )
    calls = []

    def score(folder, **kwargs):
        calls.append(folder)
        unit = UnitScore.from_observations("bpb/prose", "bpb", False, {"d0": (1.0, 2.0), "d1": (3.0, 2.0)})
        return {"bpb/prose": unit}, {"scorer": "stub"}

    monkeypatch.setattr(evaluation, "score_model", score)
    first = evaluation.evaluate_from_config(config, [workspace / "fused"])
    fingerprint = first.payload["models"]["fused"]["fingerprint"]
    (entry,) = [  # this config's entry (other tests score the same folder under other keys)
        p
        for p in (Path(config.cache_dir) / "eval").glob(f"*/{fingerprint}.json")
        if json.loads(p.read_text()).get("facts") == {"scorer": "stub"}
    ]
    entry.write_text(damage)
    scored = len(calls)
    with caplog.at_level("WARNING", logger="pipeline.evaluation"):
        again = evaluation.evaluate_from_config(config, [workspace / "fused"])
    assert f"{entry}: damaged score cache entry" in caplog.text
    assert (
        len(calls) == scored + 1
        and again.payload["models"]["fused"]["scores"] == first.payload["models"]["fused"]["scores"]
    )
    assert json.loads(entry.read_text())["scores"]
