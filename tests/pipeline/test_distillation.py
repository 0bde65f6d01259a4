"""`polyfuse distill` from a config: only the student is ever loaded, bad caches are refused before
it, two processes (ZeRO-2, gloo) split the corpus as the loader says, and a run killed with
SIGKILL resumes to exactly the losses and weights of a run that never stopped."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from stages.distill.engine import resolve_dtype
from stages.distill.metrics import read_metrics
from stages.distill.run_state import checkpoint_tags
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
    # Provenance: the export's config.yaml is the run's config (with the strategy it ran and the
    # dtype `auto` resolved to on this machine) and names the caches it read.
    exported = tmp_path / "runs" / "cli" / "export" / "config.yaml"
    run_config = load_config(config)
    assert run_config.distill.dtype == "auto"
    assert load_config(exported) == dataclasses.replace(
        run_config,
        distill=dataclasses.replace(run_config.distill, strategy="min_ce", dtype=resolve_dtype("auto")),
    )
    assert "# corpus_key: " in exported.read_text() and "# teacher_key gemma: " in exported.read_text()


def test_the_export_config_pins_a_hub_dataset_to_its_commit(
    world: FakeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.distillation import StreamInputs, export_config_yaml
    from stages import model_source
    from stages.prepare.settings import CorpusSource
    from tests.hub_cache import add_snapshot, point_branch

    commit = "c" * 40
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_source._resolve_hub.cache_clear()
    (tmp_path / "web" / "data").mkdir(parents=True)
    (tmp_path / "web" / "data" / "train.jsonl").write_text('{"text": "x"}\n')
    add_snapshot(tmp_path / "hub", "org/web", commit, tmp_path / "web", "dataset")
    point_branch(tmp_path / "hub", "org/web", "main", commit, "dataset")
    local = world.config.corpus.sources
    sources = [*local, CorpusSource(dataset="org/web", domain="web")]
    config = dataclasses.replace(
        world.config, corpus=dataclasses.replace(world.config.corpus, sources=sources)
    )
    exported = yaml.safe_load(export_config_yaml(config, StreamInputs("corpuskey", [], [], {})))
    model_source._resolve_hub.cache_clear()
    assert exported["corpus"]["sources"][-1]["dataset"] == f"org/web@{commit}"  # main, pinned
    assert exported["corpus"]["sources"][:-1] == [dataclasses.asdict(s) for s in local]


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
    config_path = write_config(config, tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(config_path)])
    assert result.exit_code == 1
    assert "teacher 'gemma'" in result.output and "shard-00001.parquet" in result.output
    assert f"polyfuse extract --config {config_path} --teacher gemma" in result.output
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


# The first attempt of the crash test: `polyfuse ARGS...` with one change: it holds (sleeps) inside
# the write of checkpoint TAG, after its model states and before its optimizer states, and says so by
# creating MARKER. The SIGKILL then lands at a known point instead of racing a 3-second training loop.
# Arguments: TAG MARKER ARGS...
HOLDING_CLI = """
import sys, time
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

hold_tag, marker = sys.argv[1], sys.argv[2]
save = TorchCheckpointEngine.save

def save_or_hold(self, state_dict, path):
    if hold_tag in path and path.endswith("optim_states.pt"):
        open(marker, "w").close()
        time.sleep(3600)
    save(self, state_dict, path)

TorchCheckpointEngine.save = save_or_hold
from pipeline.cli import app
sys.argv = ["polyfuse", *sys.argv[3:]]
app()
"""
LOGGED = ("loss/total", "loss/clm", "loss/fusion", "loss/feedback", "lr/student", "lr/gate")

Spawn = Callable[..., subprocess.Popen]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """`spawn(args, *python_args)`: `python -m pipeline.cli ARGS` (or `python PYTHON_ARGS ARGS`) as
    one single-process job in its own process group, so that a kill reaches its loader workers
    too; whatever still runs at teardown is killed, so a failed test leaves nothing behind."""
    started: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # In-process distill tests leave a rank and a port in this process's environment.
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)

    def start(args: list[str], *python_args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, *(python_args or ("-m", "pipeline.cli")), *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            kill_group(proc)
            proc.communicate()


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, signal.SIGKILL)


def finish(proc: subprocess.Popen, what: str, timeout: float = 300) -> str:
    """Wait for `proc` to exit 0; fail with its output when it does not, or not in time."""
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"{what} did not finish in {timeout} s:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, f"{what} failed:\n{output[-3000:]}"
    return output


def wait_until(
    ready: Callable[[], bool], what: str, timeout: float, running: subprocess.Popen | None = None
) -> None:
    """Poll `ready`; fail after `timeout` s, or as soon as `running` (when given) has exited."""
    deadline = time.monotonic() + timeout
    while not ready():
        if running is not None and running.poll() is not None:
            pytest.fail(f"the run exited before {what}:\n{running.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.05)


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of the process group `pgid` that are not zombies (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_run_killed_mid_checkpoint_resumes_to_the_same_losses_and_weights(
    world: FakeWorld, tmp_path: Path, spawn: Spawn
) -> None:
    """6 steps straight vs: SIGKILL to the CLI and its loader workers while checkpoint 4 is half
    written (its model states on disk, `latest` still step 2, the logs already at step 4), then
    `--resume` to step 6. The resumed run goes on from step 2 and ends identical to the straight
    one: losses and learning rates of every step, samples, student weights and gate."""
    runs = tmp_path / "runs"
    common = {"max_steps": 6, "checkpoint_every": 2, "loader_workers": 2, "log_every": 1}
    configs = {
        name: str(write_config(world.config_for(runs, name=name, **common), tmp_path / f"{name}.yaml"))
        for name in ("straight", "killed")
    }
    straight = spawn(["distill", "--config", configs["straight"]])  # runs alongside the killed one
    marker = tmp_path / "holding"
    args = ["distill", "--config", configs["killed"]]
    first = spawn(args, "-c", HOLDING_CLI, "step-000004", str(marker))
    wait_until(marker.exists, "hold in checkpoint step-000004", timeout=300, running=first)
    checkpoints, logs = runs / "killed" / "checkpoints", runs / "killed" / "logs"
    assert (checkpoints / "latest").read_text() == "step-000002"
    assert [p.name for p in (checkpoints / "step-000004").iterdir()] == ["mp_rank_00_model_states.pt"]
    assert len(live_processes_in_group(first.pid)) >= 1 + common["loader_workers"]
    kill_group(first)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    wait_until(lambda: not live_processes_in_group(first.pid), "end of its loader workers", timeout=30)
    assert [r["step"] for r in read_metrics(logs / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (runs / "killed" / "export").exists()

    output = finish(spawn([*args, "--resume"]), "the resumed run")
    assert "distill adaptive: 6 steps" in output and "exported to" in output
    finish(straight, "the straight run")

    def logged(run: str) -> list[tuple]:
        return [
            (r["step"], *(r[k] for k in LOGGED)) for r in read_metrics(runs / run / "logs" / "metrics.jsonl")
        ]

    assert [r[0] for r in logged("straight")] == [1, 2, 3, 4, 5, 6]
    assert logged("killed") == logged("straight")  # steps 1-2 from the first attempt, 3-6 resumed
    samples = [(runs / run / "logs" / "samples-rank0.jsonl").read_text() for run in ("killed", "straight")]
    assert samples[0] == samples[1]
    assert checkpoint_tags(checkpoints) == ["step-000004", "step-000006"]
    assert (checkpoints / "latest").read_text() == "step-000006"
    a, b = (load_file(runs / run / "export" / "model.safetensors") for run in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    gates = [torch.load(runs / run / "export" / "gate.pt")["state_dict"] for run in ("straight", "killed")]
    assert gates[0].keys() == gates[1].keys() and all(torch.equal(gates[0][k], gates[1][k]) for k in gates[0])


# -- the chunk objective (ALM) -----------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.1, None])
def test_chunk_objective_trains_under_the_likelihood_gate_and_loads_no_teacher(
    world: FakeWorld, tmp_path: Path, loaded_models, threshold
) -> None:
    config = world.config_for(
        tmp_path / "runs",
        name="chunk",
        max_steps=2,
        objective="chunk",
        lam=0.5,
        gate_objective="likelihood",
        chunk_space_threshold=threshold,
    )
    result = CliRunner().invoke(app, ["distill", "--config", str(write_config(config, tmp_path / "c.yaml"))])
    assert result.exit_code == 0, result.output
    assert loaded_models == [str(world.student)]
    records = read_metrics(tmp_path / "runs" / "chunk" / "logs" / "metrics.jsonl")
    for record in records:
        assert {"loss/clm", "loss/chunk", "loss/gate_nll", "loss/feedback"} <= record.keys()
        assert "loss/fusion" not in record
        assert record["loss/chunk"] != 0.0 and all(
            map(math.isfinite, (record["loss/chunk"], record["loss/total"]))
        )
        # Every row after the first shared boundary is in a chunk: most of the text teaches.
        assert record["chunk/covered_rate"] > 0.8 and record["chunk/rows_per_chunk"] >= 1.0
    summary = json.loads((tmp_path / "runs" / "chunk" / "export" / "fusion_stats.json").read_text())
    assert set(summary["mean_loss"]) == {"total", "clm", "chunk", "feedback", "gate_nll"}


def test_unknown_objective_names_the_choices_and_writes_nothing(world: FakeWorld, tmp_path: Path) -> None:
    path = write_config(world.config_for(tmp_path / "runs"), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(path), "distill.objective=alm"])
    assert result.exit_code == 2
    assert "distill.objective" in result.output and "fusion" in result.output and "chunk" in result.output
    assert not (tmp_path / "runs").exists()


def test_sigma_correction_on_a_cache_without_sigma_names_the_extract_command(
    world: FakeWorld, tmp_path: Path, loaded_models
) -> None:
    from tests.pipeline.test_cache_check import strip_space_logprobs

    cache = tmp_path / "cache"
    shutil.copytree(world.root / "cache", cache)
    for manifest in (cache / "teachers").rglob("manifest.json"):
        strip_space_logprobs(manifest.parent)
    config = dataclasses.replace(
        world.config_for(tmp_path / "runs", objective="chunk", lam=0.5), cache_dir=str(cache)
    )
    path = write_config(config, tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "no σ" in result.output and f"polyfuse extract --config {path} --teacher" in result.output
    assert loaded_models == [] and not (tmp_path / "runs").exists()
    # The same cache serves the uncorrected chunks, and every other objective.
    result = CliRunner().invoke(app, ["distill", "--config", str(path), "distill.chunk_space_threshold=null"])
    assert result.exit_code == 0, result.output


def test_exact_token_objective_trains_on_the_rows_both_write_alike(world: FakeWorld, tmp_path: Path) -> None:
    common = {"max_steps": 2, "target": "residual", "lam": 0.5}
    # name → (distill settings, CLI arguments); "gate" is every teacher under the likelihood gate
    # (the `ce_exact_token_gate` arm of `polyfuse curves`).
    cases = {
        "fusion": ({"objective": "fusion"}, ["--strategy", "single:gemma"]),
        "exact_token": ({"objective": "exact_token"}, ["--strategy", "single:gemma"]),
        "gate": ({"objective": "exact_token", "gate_objective": "likelihood"}, []),
    }
    runs = {}
    for name, (settings, args) in cases.items():
        config = world.config_for(tmp_path / "runs", name=name, **settings, **common)
        path = write_config(config, tmp_path / f"{name}.yaml")
        result = CliRunner().invoke(app, ["distill", "--config", str(path), *args])
        assert result.exit_code == 0, result.output
        runs[name] = read_metrics(tmp_path / "runs" / name / "logs" / "metrics.jsonl")
    for fusion, exact, gate in zip(runs["fusion"], runs["exact_token"], runs["gate"], strict=True):
        assert "loss/exact_token" in exact and "loss/fusion" not in exact
        # Exact-token rows are a strict, non-empty subset of the offset-aligned rows.
        assert 0.0 < exact["exact_token/rate"] < fusion["fusion/fused_rate"]
        # A row is a target where any present teacher writes the student's next token alike.
        assert {"loss/exact_token", "loss/gate_nll"} <= gate.keys() and "loss/fusion" not in gate
        assert gate["exact_token/rate"] >= exact["exact_token/rate"] and math.isfinite(gate["loss/total"])


def test_exact_token_with_the_renormalised_target_is_refused(world: FakeWorld, tmp_path: Path) -> None:
    path = write_config(world.config_for(tmp_path / "runs"), tmp_path / "c.yaml")
    result = CliRunner().invoke(
        app,
        ["distill", "--config", str(path), "distill.objective=exact_token", "distill.target=renormalised"],
    )
    assert result.exit_code == 2 and "distill.target=residual" in result.output
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_other_data_settings_and_teachers_before_any_model_loads(
    world: FakeWorld, tmp_path: Path, loaded_models
) -> None:
    """The aligner and the target change what the student learns; a teacher removed changes the
    gate's shape (once torch's "size mismatch for gate.layers.0.weight" after the student loaded):
    each is named, with the teachers then and now, before any model loads."""
    from pipeline.distillation import distill_from_config

    config = world.config_for(tmp_path / "runs", name="resume", max_steps=2, checkpoint_every=1)
    distill_from_config(config, progress=False, stop_after_steps=1)
    loaded_models.clear()
    other = dataclasses.replace(
        config, distill=dataclasses.replace(config.distill, aligner="dtw", target="residual")
    )
    with pytest.raises(
        ValueError, match=r"changes aligner 'offsets' → 'dtw', target 'renormalised' → 'residual'"
    ):
        distill_from_config(other, resume=True, progress=False)
    fewer = dataclasses.replace(config, teachers=config.teachers[:1])
    with pytest.raises(ValueError, match=r"teachers \['smol', 'gemma'\] → \['smol'\]"):
        distill_from_config(fewer, resume=True, progress=False)
    assert loaded_models == []


def test_a_student_tokenizer_larger_than_its_embedding_is_refused_before_any_model_loads(
    world: FakeWorld, tmp_path: Path, loaded_models
) -> None:
    """Tokens added to the tokenizer without resizing the weights: the corpus holds them, so their
    ids (past the 49,152 embedding rows) would be an IndexError in the middle of a forward pass."""
    from pipeline.distillation import distill_from_config
    from stages.tokenization import load_tokenizer

    student = tmp_path / "student"
    shutil.copytree(world.student, student)
    tokenizer = load_tokenizer(student)
    tokenizer.add_tokens(["best of times", "age of wisdom"])
    tokenizer.save_pretrained(student)
    config = dataclasses.replace(
        world.config_for(tmp_path / "runs", name="big-vocab"),
        student=dataclasses.replace(world.config.student, path=str(student)),
    )
    with pytest.raises(ValueError) as err:
        distill_from_config(config, progress=False, stop_after_steps=1)
    assert (
        f"student.path {student}: the tokenizer has 49154 tokens but the model's embedding has 49152"
        in str(err.value)
    )
    assert "resize_token_embeddings" in str(err.value) and loaded_models == []


def test_a_student_without_a_causal_lm_head_is_one_line_naming_student_path(
    world: FakeWorld, tmp_path: Path, loaded_models
) -> None:
    from transformers import T5Config

    from pipeline.distillation import distill_from_config

    student = tmp_path / "t5"
    shutil.copytree(world.student, student)
    (student / "model.safetensors").unlink()
    T5Config(vocab_size=49152, d_model=64, num_layers=1, num_heads=2, d_ff=64).to_json_file(
        student / "config.json"
    )
    config = dataclasses.replace(
        world.config_for(tmp_path / "runs", name="t5"),
        student=dataclasses.replace(world.config.student, path=str(student)),
    )
    with pytest.raises(ValueError) as err:
        distill_from_config(config, progress=False, stop_after_steps=1)
    message = str(err.value)
    assert message.startswith(
        f"student.path {student} is a 't5' model, which has no causal language-model head"
    )
    assert len(message) < 400 and loaded_models == []
