"""Stage-one orchestration: resume after SIGKILL, ranks, caching and bad input.

Runs use the fake backend (no model) with the real SmolLM2 and Gemma tokenizers, so they take
seconds; the subprocess runs pay Python's and transformers' start-up only.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from data_schemas.keys import sha256_file
from pipeline.config import ConfigError, load_config
from pipeline.extraction import run_extraction
from pipeline.inspection import validate_path

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS = REPO / "models" / "tokenizers"
SCRIPT = """
import sys
from stages.extract.backends.fake_backend import FakeBackend
FakeBackend.seconds_per_call = float(sys.argv[1])  # slow enough to be killed mid-run
from pipeline.cli import app
sys.argv = ["polyfuse", *sys.argv[2:]]
app()
"""


@pytest.fixture(autouse=True)
def tokenizers_present() -> None:
    if not (TOKENIZERS / "smollm2-135m-instruct" / "tokenizer.json").is_file():
        pytest.fail(f"{TOKENIZERS} is missing: run `make setup`")


def write_corpus(folder: Path, docs: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "and",
        "42",
        "café",
        "naïve",
        "東京",
        "def",
        "return",
    ]
    path = folder / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(docs):
            f.write(
                json.dumps(
                    {"id": f"d{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(10, 90)))}
                )
                + "\n"
            )
    return path


def write_config(folder: Path, cache: Path, teachers: list[dict], **extract: object) -> Path:
    corpus = folder / "docs.jsonl"
    if not corpus.exists():
        write_corpus(folder)
    config = {
        "cache_dir": str(cache),
        "corpus": {
            "sources": [{"path": str(corpus), "domain": "prose"}],
            "samples_per_shard": 4,
            "max_chars": 300,
            "heldout_fraction": 0.0,
        },
        "teachers": teachers,
        "extract": {"top_k": 8, "max_tokens": 48, "vllm_max_logprobs": 8, **extract},
    }
    path = folder / f"config-{cache.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fake_teacher(name: str, tokenizer: str = "smollm2-135m-instruct", **kw: object) -> dict:
    return {"name": name, "path": str(TOKENIZERS / tokenizer), "backend": "fake", **kw}


def shard_hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.glob("*.parquet"))}


def polyfuse(args: list[str], cwd: Path, seconds_per_call: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(seconds_per_call), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def reference_run(tmp_path: Path, teachers: list[dict]) -> tuple[Path, object]:
    config_path = write_config(tmp_path, tmp_path / "reference", teachers)
    report = run_extraction(load_config(config_path), progress=False)
    return config_path, report


def test_killed_three_times_then_resumed_gives_identical_shards(tmp_path: Path) -> None:
    _, reference = reference_run(tmp_path, [fake_teacher("a")])
    ref_dir = reference.plans[0].directory
    expected = shard_hashes(ref_dir)
    assert len(expected) >= 8
    config = write_config(tmp_path, tmp_path / "crashed", [fake_teacher("a")])
    crashed_dir = tmp_path / "crashed" / ref_dir.relative_to(tmp_path / "reference")

    def finished() -> int:
        return len(list(crashed_dir.glob("*.entry.json")))

    for _ in range(3):
        before = finished()
        proc = polyfuse(["extract", "--config", str(config)], cwd=tmp_path, seconds_per_call=0.4)
        deadline = time.monotonic() + 120
        while finished() <= before:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 3 <= finished() < len(expected), "three kills should leave a partial cache"

    report = run_extraction(load_config(config), progress=False)
    assert report.runs["a"].units_done == len(expected) - report.runs["a"].units_cached
    assert shard_hashes(crashed_dir) == expected
    manifest = json.loads((crashed_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest == json.loads((ref_dir / "manifest.json").read_text())
    assert validate_path(tmp_path / "crashed") == []


def test_two_ranks_write_the_same_cache_as_one(tmp_path: Path) -> None:
    teachers = [fake_teacher("a"), fake_teacher("g", "gemma-3-270m", max_shards=3)]
    _, reference = reference_run(tmp_path, teachers)
    config = write_config(tmp_path, tmp_path / "ranked", teachers)
    procs = [
        polyfuse(["extract", "--config", str(config), "--rank", str(r), "--world-size", "2"], cwd=tmp_path)
        for r in (0, 1)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
    for plan in reference.plans:
        ranked = tmp_path / "ranked" / plan.directory.relative_to(tmp_path / "reference")
        assert shard_hashes(ranked) == shard_hashes(plan.directory)
        assert json.loads((ranked / "manifest.json").read_text()) == json.loads(
            (plan.directory / "manifest.json").read_text()
        )
    assert validate_path(tmp_path / "ranked") == []


def test_rerun_loads_no_model_and_new_teacher_runs_alone(tmp_path: Path, monkeypatch) -> None:
    config_path, first = reference_run(tmp_path, [fake_teacher("a", max_shards=2)])
    assert first.runs["a"].units_done == 2
    before = shard_hashes(first.plans[0].directory)

    import stages.extract.backends as backends

    def no_model(*args, **kwargs):
        raise AssertionError("a cached run must not load a model")

    monkeypatch.setattr(backends, "open_backend", no_model)
    again = run_extraction(load_config(config_path), progress=False)
    assert again.message == "all 2 units cached"
    monkeypatch.undo()

    config = load_config(
        write_config(
            tmp_path,
            tmp_path / "reference",
            [fake_teacher("a", max_shards=3), fake_teacher("g", "gemma-3-270m", max_shards=1)],
        )
    )
    more = run_extraction(config, progress=False)
    assert more.runs["a"].units_done == 1 and more.runs["g"].units_done == 1
    assert {k: v for k, v in shard_hashes(first.plans[0].directory).items() if k in before} == before


def test_changed_corpus_gets_a_new_directory_and_keeps_the_old(tmp_path: Path) -> None:
    config_path, first = reference_run(tmp_path, [fake_teacher("a", max_shards=2)])
    old = first.plans[0].directory
    before = shard_hashes(old)
    write_corpus(tmp_path, docs=31)
    second = run_extraction(load_config(config_path), progress=False)
    new = second.plans[0].directory
    assert new != old and new.parent == old.parent  # same teacher key, new corpus key
    assert shard_hashes(old) == before and len(shard_hashes(new)) == 2


def test_bad_input_is_named_before_any_model_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extract.top_k must be at least 1, got 0"):
        load_config(write_config(tmp_path, tmp_path / "c", [fake_teacher("a")], top_k=0))
    with pytest.raises(ConfigError, match=r"extract.top_k must not exceed extract.vllm_max_logprobs \(8\)"):
        load_config(write_config(tmp_path, tmp_path / "c", [fake_teacher("a")], top_k=9))
    missing = {"name": "m", "path": str(tmp_path / "no-model"), "backend": "transformers"}
    with pytest.raises(
        ValueError, match=r"teacher m: model folder .*no-model does not exist: run `make setup`"
    ):
        run_extraction(load_config(write_config(tmp_path, tmp_path / "c", [missing])), progress=False)

    from transformers import CanineTokenizer  # a tokenizer with no fast (offset-giving) form

    CanineTokenizer().save_pretrained(tmp_path / "slow")
    slow = {"name": "s", "path": str(tmp_path / "slow"), "backend": "fake"}
    with pytest.raises(ValueError, match="teacher s: the tokenizer in .* cannot report character offsets"):
        run_extraction(load_config(write_config(tmp_path, tmp_path / "c", [slow])), progress=False)
    with pytest.raises(ConfigError, match="teacher 'zz' is not in the config"):
        run_extraction(load_config(write_config(tmp_path, tmp_path / "c", [fake_teacher("a")])), teacher="zz")


def test_shards_carry_space_logprobs_and_the_mixed_dtype_is_its_own_teacher(tmp_path: Path) -> None:
    from data_schemas.teacher_shard import has_space_logprobs
    from pipeline.extraction import load_teacher_tokenizer, plan_teacher, prepare_shared_corpus

    config_path, report = reference_run(tmp_path, [fake_teacher("a", max_shards=2)])
    shards = sorted(report.plans[0].directory.glob("*.parquet"))
    assert len(shards) == 2 and all(has_space_logprobs(p) for p in shards)
    config = load_config(config_path)
    teacher = config.teachers[0]
    corpus = prepare_shared_corpus(config)
    tokenizer = load_teacher_tokenizer(teacher, "fake")
    keys = {
        dtype: plan_teacher(
            replace(config, extract=replace(config.extract, dtype=dtype)), teacher, corpus, tokenizer
        ).key
        for dtype in ("float32", "bf16_mixed", "bfloat16")
    }
    assert keys["float32"] == report.plans[0].key and len(set(keys.values())) == 3


def test_a_teacher_tokenizer_larger_than_its_embedding_is_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens added to the tokenizer, the weights unchanged: the corpus holds the added text, whose
    id (past the embedding's 49,152 rows) was an IndexError in the middle of a forward pass."""
    from stages.tokenization import load_tokenizer
    from tests.tiny_models import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "teacher", TOKENIZERS / "smollm2-135m-instruct")
    tokenizer = load_tokenizer(folder)
    tokenizer.add_tokens(["quick brown"])
    tokenizer.save_pretrained(folder)
    teacher = {"name": "t", "path": str(folder), "backend": "transformers", "dtype": "float32"}
    config = load_config(write_config(tmp_path, tmp_path / "cache", [teacher]))
    import stages.extract.backends as backends

    def no_model(*args, **kwargs):
        raise AssertionError("the teacher model was opened before the refusal")

    monkeypatch.setattr(backends, "open_backend", no_model)
    with pytest.raises(ValueError) as err:
        run_extraction(config, progress=False)
    assert str(err.value).startswith(
        f"teacher t: teachers[].path {folder}: the tokenizer has 49153 tokens but the model's embedding has "
        "49152 rows"
    )


def test_the_teacher_key_does_not_depend_on_the_backend(tmp_path: Path) -> None:
    """vLLM and transformers compute the same distributions of the same model (their parity is
    tested in tests/stages/extract/test_vllm_backend.py), so a cache extracted by one serves the
    other: the key holds no backend, and no config comment may say it does. (The dtype is in the
    key, and `auto` resolves per backend, so both name theirs.)"""
    from pipeline.extraction import load_teacher_tokenizer, plan_teacher, prepare_shared_corpus
    from tests.tiny_models import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "teacher", TOKENIZERS / "smollm2-135m-instruct")
    teachers = [
        {"name": "t", "path": str(folder), "backend": b, "dtype": "float32"} for b in ("transformers", "vllm")
    ]
    keys = set()
    for teacher in teachers:
        config = load_config(write_config(tmp_path, tmp_path / "cache", [teacher]))
        spec = config.teachers[0]
        plan = plan_teacher(
            config, spec, prepare_shared_corpus(config), load_teacher_tokenizer(spec, spec.backend)
        )
        keys.add(plan.key)
    assert len(keys) == 1
    for yaml_file in sorted((REPO / "configs").glob("*.yaml")):
        assert "backend is in the teacher key" not in yaml_file.read_text(), yaml_file
