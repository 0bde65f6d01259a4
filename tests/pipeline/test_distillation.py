"""`polyfuse distill` from a config: only the student is ever loaded, bad caches are refused before
it, and two processes (ZeRO-2, gloo) split the corpus as the loader says."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from stages.distill.metrics import read_metrics
from tests.stages.distill.fake_world import GEMMA, SMOLLM2, FakeWorld, fake_world

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FakeWorld:
    for folder in (SMOLLM2, GEMMA):
        if not (folder / "tokenizer.json").is_file():
            pytest.fail(f"{folder} is missing: run `make tokenizers`")
    return fake_world(tmp_path_factory.getbasetemp() / "distill-world")


def write_config(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path


@pytest.fixture
def loaded_models(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model folder any `from_pretrained` of a transformers model class loads, in order."""
    import transformers

    seen: list[str] = []
    original = transformers.PreTrainedModel.from_pretrained.__func__

    def recording(cls, path, *args, **kwargs):
        seen.append(str(path))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(recording))
    return seen


def test_distill_trains_exports_and_loads_no_teacher_model(
    world: FakeWorld, tmp_path: Path, loaded_models
) -> None:
    config = write_config(world.config_for(tmp_path / "runs", name="cli", max_steps=2), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(config), "--strategy", "min_ce"])
    assert result.exit_code == 0, result.output
    assert "distill min_ce: 2 steps" in result.output and "exported to" in result.output
    assert "smol" in result.output and "gemma" in result.output  # the per-teacher table
    assert loaded_models == [str(world.student)]  # the student, and nothing else
    assert (tmp_path / "runs" / "cli" / "export" / "model.safetensors").is_file()


def test_unknown_strategy_and_single_teacher_are_user_errors(world: FakeWorld, tmp_path: Path) -> None:
    config = write_config(world.config_for(tmp_path / "runs"), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(config), "--strategy", "single:gpt"])
    assert result.exit_code == 2 and "'gpt'" in result.output and "'smol', 'gemma'" in result.output


def test_damaged_teacher_cache_is_refused_before_any_model_loads(
    world: FakeWorld, tmp_path: Path, loaded_models
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(world.root / "cache", cache)
    shard = next(p for p in (cache / "teachers").rglob("shard-00001.parquet") if _teacher_of(p) == "gemma")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    config = dataclasses.replace(world.config_for(tmp_path / "runs"), cache_dir=str(cache))
    result = CliRunner().invoke(app, ["distill", "--config", str(write_config(config, tmp_path / "c.yaml"))])
    assert result.exit_code == 1
    assert "teacher 'gemma'" in result.output and "shard-00001.parquet" in result.output
    assert "polyfuse extract --teacher gemma" in result.output
    assert loaded_models == []


def _teacher_of(shard: Path) -> str:
    return json.loads((shard.parent / "manifest.json").read_text())["header"]["teacher"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_split_the_corpus_with_no_sample_twice_and_none_lost(
    world: FakeWorld, tmp_path: Path
) -> None:
    """World size 2 (ZeRO-2, gloo): each rank trains on its own shards [rank::2]; over each rank's
    epoch no sample is seen twice and, together, none is lost. The feedback loss sums importance
    over the optimizer step and both ranks (its all-reduce runs inside the engine's forward)."""
    steps, batch = 6, 4
    config = write_config(
        world.config_for(
            tmp_path / "runs",
            name="two",
            max_steps=steps,
            micro_batch_size=batch,
            checkpoint_every=3,
            feedback_scope="step",
        ),
        tmp_path / "c.yaml",
    )
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "distill", "--config", str(config)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=540)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    logs = tmp_path / "runs" / "two" / "logs"
    corpus = [s for s in world.config.corpus.sources]
    assert corpus  # the world's corpus
    from pipeline.distillation import resolve_stream_inputs

    shards = resolve_stream_inputs(world.config).corpus_shards
    epoch_of = {rank: sum(s.rows for s in shards[rank::2]) for rank in (0, 1)}
    seen = {}
    for rank in (0, 1):
        lines = [json.loads(line) for line in (logs / f"samples-rank{rank}.jsonl").read_text().splitlines()]
        ids = [sid for line in lines for sid in line["sample_ids"]]
        assert len(ids) == steps * batch and [line["step"] for line in lines] == list(range(1, steps + 1))
        seen[rank] = ids[: epoch_of[rank]]
        assert len(set(seen[rank])) == len(seen[rank])  # no sample twice within the rank's epoch
    import pyarrow.parquet as pq

    everything = [
        sid for s in shards for sid in pq.read_table(s.path, columns=["sample_id"])["sample_id"].to_pylist()
    ]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(everything)  # none lost
    records = read_metrics(logs / "metrics.jsonl")  # rank 0 writes the job-wide numbers
    assert [r["samples"] for r in records] == [2 * batch] * steps
    assert not (logs.parent / "export").with_name("export.tmp").exists()
    assert (logs.parent / "export" / "model.safetensors").is_file()
