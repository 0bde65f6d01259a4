"""Damaged caches (issue 14): every fault `validate` prints comes with a command that, run as
printed in a shell, leaves `validate` clean; `extract` and `inspect` name the damage instead of
failing inside pyarrow. Fake teachers (no model), real tokenizers: seconds per command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from data_schemas.manifest import read_manifest, write_entry, write_manifest
from data_schemas.teacher_shard import decode_table, read_teacher_shard, shard_layout, write_teacher_shard
from pipeline.cache_check import Repairs
from pipeline.config import load_config
from pipeline.extraction import run_extraction
from pipeline.inspection import inspect_path, validate_path
from tests.pipeline.test_extraction import fake_teacher, write_config


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder, config) of a finished two-teacher fake extraction to copy and damage."""
    folder = tmp_path_factory.mktemp("repairs")
    config = write_config(
        folder,
        folder / "cache",
        [fake_teacher("a", max_shards=3), fake_teacher("g", "gemma-3-270m", max_shards=2)],
    )
    run_extraction(load_config(config), progress=False)
    return folder, config


@pytest.fixture
def world(built: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    """(cache, config, teacher name → teacher dir) of a private copy."""
    folder, config = built
    shutil.copytree(folder / "cache", tmp_path / "cache")
    shutil.copy(folder / "docs.jsonl", tmp_path / "docs.jsonl")
    text = config.read_text().replace(str(folder), str(tmp_path))
    (tmp_path / "config.yaml").write_text(text)
    dirs = {
        read_manifest(p.parent).header["teacher"]: p.parent
        for p in (tmp_path / "cache" / "teachers").rglob("manifest.json")
    }
    return tmp_path / "cache", tmp_path / "config.yaml", dirs


def run_repairs(cache: Path, config: Path) -> list[str]:
    """Run every distinct repair `validate` prints, as printed: `rm` in a subprocess, each
    `polyfuse ...` through the CLI in-process (the same argv, without a Python start-up each)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    faults = validate_path(cache, repairs=Repairs(str(config)))
    commands = list(dict.fromkeys(f.repair for f in faults))
    for command in commands:
        for part in command.split(" && "):
            argv = shlex.split(part)
            if argv[0] == "polyfuse":
                result = CliRunner().invoke(app, argv[1:])
                assert result.exit_code == 0, f"{command}\n{result.output}"
            else:
                assert argv[:2] == ["rm", "-rf"], command
                subprocess.run(argv, check=True)
    return commands


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_printed_repair_runs_and_leaves_validate_clean(world) -> None:
    cache, config, dirs = world
    a, g = dirs["a"], dirs["g"]
    (a / "shard-00001.parquet").unlink()  # deleted shard: `rm` of it must not stop the extract
    flip_byte(a / "shard-00002.parquet")
    (g / "shard-00000.parquet.entry.json").write_text("{not json")  # corrupt entry file
    manifest = read_manifest(g)  # an edited token count in the manifest
    entries = tuple(
        dataclasses.replace(e, tokens=e.tokens + 1) if e.name == "shard-00001.parquet" else e
        for e in manifest.shards
    )
    write_manifest(g, dataclasses.replace(manifest, shards=entries))
    (g / "shard-00001.parquet.999999999.tmp").write_bytes(b"left by a killed writer")
    corpus_shard = next((cache / "corpus").iterdir()) / "train" / "shard-00003.parquet"
    flip_byte(corpus_shard, 0.3)

    faults = {
        (Path(f.path).name, f.problem.split(" (")[0])
        for f in validate_path(cache, repairs=Repairs(str(config)))
    }
    assert ("shard-00001.parquet", "listed in the manifest but missing") in faults
    assert ("shard-00002.parquet", "sha256 differs from the manifest") in faults
    assert ("shard-00003.parquet", "sha256 differs from the manifest") in faults  # the corpus shard
    assert ("shard-00001.parquet", "its manifest entry differs from its .entry.json") in faults
    assert any(name == "shard-00000.parquet.entry.json" and "corrupt" in p for name, p in faults)
    assert any("leftovers of killed writers" in p for _, p in faults)
    commands = run_repairs(cache, config)
    assert all(f"--config {config}" in c for c in commands if "polyfuse" in c)
    assert validate_path(cache) == []


def test_corrupt_manifest_and_a_directory_under_another_corpus_are_repaired(world) -> None:
    cache, config, dirs = world
    (dirs["a"] / "manifest.json").write_text('{"kind": "teacher"')
    stray = dirs["g"].parent / "0123456789abcdef"
    shutil.copytree(dirs["g"], stray)  # a teacher directory under the wrong corpus key
    faults = validate_path(cache, repairs=Repairs(str(config)))
    assert any("manifest.json" in f.path and "is corrupt" in f.problem for f in faults)
    assert any(f.path == str(stray) and "extracted over corpus" in f.problem for f in faults)
    run_repairs(cache, config)
    assert validate_path(cache) == [] and not stray.exists()


def test_nan_in_a_shard_with_matching_checksums_is_a_fault(world) -> None:
    cache, config, dirs = world
    write_nan_shard(dirs["a"] / "shard-00000.parquet")
    faults = validate_path(cache)
    assert [f.problem for f in faults if "NaN" in f.problem]
    run_repairs(cache, config)
    assert validate_path(cache) == []


def write_nan_shard(path: Path) -> None:
    """Rewrite `path` with one NaN score, and an entry and manifest that match its new bytes."""
    table = read_teacher_shard(path)
    layout, top_k = shard_layout(table.schema)
    samples = decode_table(table)
    samples[0] = dataclasses.replace(samples[0], ce=math.nan)
    entry = write_teacher_shard(samples, path, layout=layout, top_k=top_k)
    write_entry(path.parent, entry)
    manifest = read_manifest(path.parent)
    write_manifest(
        path.parent, manifest.with_entries([entry if e.name == entry.name else e for e in manifest.shards])
    )


def test_extract_redoes_a_cut_off_shard_and_inspect_names_its_repair(world) -> None:
    cache, config, dirs = world
    shard = dirs["a"] / "shard-00001.parquet"
    good = shard.read_bytes()
    shard.write_bytes(good[:-300])
    with pytest.raises(RuntimeError, match=r"shard-00001.parquet: \d+ bytes on disk.*repair: rm -rf"):
        inspect_path(shard)
    assert "error" in dict(inspect_path(dirs["a"]))["teachers"].columns
    report = run_extraction(load_config(config), teacher="a", progress=False)
    assert report.runs["a"].units_done == 1 and shard.read_bytes() == good
    assert validate_path(cache) == []


def test_corrupt_entry_file_is_named_by_extract(world) -> None:
    _, config, dirs = world
    entry = dirs["g"] / "shard-00000.parquet.entry.json"
    entry.write_text("{")
    with pytest.raises(RuntimeError, match=rf"{entry} is corrupt .*rm -f {entry}"):
        run_extraction(load_config(config), progress=False)


def test_extract_cleans_only_dead_writers_tmp_files(world) -> None:
    cache, config, dirs = world
    dead = dirs["a"] / "shard-00000.parquet.999999999.tmp"
    live = dirs["a"] / f"shard-00001.parquet.entry.json.{os.getpid()}.tmp"  # a writer still running
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    assert any("leftovers" in f.problem and "999999999" in f.problem for f in validate_path(cache))
    run_extraction(load_config(config), progress=False)
    assert not dead.exists() and live.exists()
    assert json.loads((dirs["a"] / "manifest.json").read_text())["complete"]


def test_a_manifest_that_is_a_directory_is_removed_by_its_repair(world) -> None:
    cache, config, dirs = world
    manifest = dirs["a"] / "manifest.json"
    manifest.unlink()
    manifest.mkdir()
    (manifest / "stray").write_text("x")
    faults = validate_path(cache, repairs=Repairs(str(config)))
    assert [(f.path, f.problem) for f in faults] == [(str(manifest), "is not a file")]
    assert faults[0].repair.startswith(f"rm -rf {manifest} && polyfuse extract")
    run_repairs(cache, config)
    assert manifest.is_file() and validate_path(cache) == []
