"""The teacher-cache check distill runs before any model loads (`checked_teacher_shards`): the
same checker as `polyfuse validate`, on a private copy of a real fake-backend cache, damaged one
way at a time; each refusal names the teacher, the shard and a repair command. A cache without σ
is sound, and refused (exit 2) only by a run that needs σ, with a repair that refills it."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_schemas.keys import sha256_file
from data_schemas.manifest import read_manifest, write_entry, write_manifest
from data_schemas.parquet_io import SCHEMA_VERSION_KEY
from data_schemas.teacher_shard import decode_table, encode_table, read_teacher_shard, shard_layout
from pipeline.cache_check import (
    Repairs,
    SpaceLogprobsMissing,
    TeacherCacheError,
    cache_faults,
    checked_teacher_shards,
)
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.distillation import resolve_stream_inputs
from pipeline.extraction import run_extraction
from tests.pipeline.test_extraction import fake_teacher, shard_hashes, write_config
from tests.stages.distill.fake_world import FakeWorld


@pytest.fixture(scope="module")
def stream_inputs(world: FakeWorld):
    return resolve_stream_inputs(world.config)


@pytest.fixture
def gemma_cache(stream_inputs, tmp_path: Path):
    """A private copy of gemma's cache to damage, and the two corpus shards gemma covers. The copy
    lies where a teacher cache lies (`teachers/<key>/<corpus_key>`), beside the corpus it mirrors."""
    source = stream_inputs.teachers[1].shards[stream_inputs.corpus_shards[0].name].parent
    key_dir = source.parents[1] / f"damaged-{tmp_path.name}"
    shutil.copytree(source, key_dir / source.name)
    yield key_dir / source.name, [s.name for s in stream_inputs.corpus_shards[:2]]
    shutil.rmtree(key_dir)


def check(cache: Path, shards: list[str], **kwargs) -> dict[str, Path]:
    corpus_key = kwargs.pop("corpus_key", None) or cache.name
    return checked_teacher_shards("gemma", cache, shards, corpus_key, Repairs(), **kwargs)


def test_sound_cache_passes(gemma_cache) -> None:
    cache, shards = gemma_cache
    assert check(cache, shards) == {name: cache / Path(name).name for name in shards}


def _replace_entry(cache: Path, name: str, **changes) -> None:
    """The shard's entry changed in the manifest and in its .entry.json alike."""
    manifest = read_manifest(cache)
    entry = dataclasses.replace(manifest.entry(name), **changes)
    shards = tuple(entry if e.name == name else e for e in manifest.shards)
    write_manifest(cache, dataclasses.replace(manifest, shards=shards))
    write_entry(cache, entry)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"has no manifest"),
        ("incomplete", r"misses finished shards \['shard-00001.parquet'\]"),
        ("other_corpus", r"extracted over corpus .* is used for\) corpus 'another'"),
        ("fewer_shards", r"was not extracted over \['shard-00002.parquet'\]"),
        ("flipped_byte", r"shard-00000.parquet: sha256 differs"),
        ("truncated", r"shard-00001.parquet: \d+ bytes on disk"),
        ("rows", r"shard-00000.parquet: 6 rows, manifest says 5"),
        ("sample_ids", r"shard-00001.parquet: sample ids differ from the corpus shard"),
        ("tokenizer", r"extracted with another tokenizer"),
    ],
)
def test_damaged_cache_is_refused_naming_teacher_shard_and_repair(
    gemma_cache, stream_inputs, damage: str, message: str
) -> None:
    cache, shards = gemma_cache
    kwargs = {}
    manifest = read_manifest(cache)
    if damage == "missing":
        shutil.rmtree(cache)
    elif damage == "incomplete":
        write_manifest(cache, dataclasses.replace(manifest, shards=manifest.shards[:1], complete=False))
    elif damage == "other_corpus":
        kwargs["corpus_key"] = "another"
    elif damage == "fewer_shards":  # gemma was extracted over 2 shards; a run reading 3
        shards = [s.name for s in stream_inputs.corpus_shards[:3]]
    elif damage == "flipped_byte":
        path = cache / "shard-00000.parquet"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path = cache / "shard-00001.parquet"
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "rows":
        _replace_entry(cache, "shard-00000.parquet", rows=5)
    elif damage == "sample_ids":
        # A shard of another corpus slice, with entries that match its bytes.
        path = cache / "shard-00001.parquet"
        shutil.copy2(cache / "shard-00000.parquet", path)
        _replace_entry(cache, path.name, bytes=path.stat().st_size, sha256=sha256_file(path))
    elif damage == "tokenizer":
        kwargs["tokenizer_fingerprint"] = "0" * 64
    with pytest.raises(TeacherCacheError, match=message) as err:
        check(cache, shards, **kwargs)
    assert "teacher 'gemma'" in str(err.value) and "→ repair:" in str(err.value)
    if damage != "missing":  # a folder without a manifest does not say whose it is
        assert "polyfuse extract --config configs/demo.yaml --teacher gemma" in str(err.value)


# -- σ: asked for by a run that needs it, never a fault otherwise ---------------------------------


def strip_space_logprobs(directory: Path) -> None:
    """Rewrite every shard of a teacher directory as polyfuse wrote it before σ existed (schema
    version 1, no σ column), its entries and manifest to match."""
    manifest = read_manifest(directory)
    entries = []
    for old in manifest.shards:
        path = directory / old.name
        table = read_teacher_shard(path)
        layout, top_k = shard_layout(table.schema)
        bare = encode_table(
            [dataclasses.replace(s, space_logprobs=None) for s in decode_table(table)],
            layout=layout,
            top_k=top_k,
        )
        pq.write_table(bare.replace_schema_metadata({**bare.schema.metadata, SCHEMA_VERSION_KEY: b"1"}), path)
        entries.append(dataclasses.replace(old, bytes=path.stat().st_size, sha256=sha256_file(path)))
        write_entry(directory, entries[-1])
    write_manifest(directory, dataclasses.replace(manifest, shards=tuple(entries)))


def test_a_cache_without_space_logprobs_is_refused_only_when_a_run_needs_them(gemma_cache) -> None:
    cache, shards = gemma_cache
    assert check(cache, shards, space_logprobs=True)  # written with σ
    strip_space_logprobs(cache)
    assert check(cache, shards) == {name: cache / Path(name).name for name in shards}  # other objectives
    with pytest.raises(SpaceLogprobsMissing, match=r"2 of the 2 shards read have no σ column") as err:
        check(cache, shards, space_logprobs=True)
    message = str(err.value)
    assert isinstance(err.value, ValueError)  # the config asks for more than the cache holds: exit 2
    assert message.startswith("teacher 'gemma': ")
    assert message.endswith(
        f"repair: rm -rf {cache} && polyfuse extract --config configs/demo.yaml --teacher gemma"
    )
    # Written by vLLM (or to be re-extracted under a config that resolves to vLLM): the repair
    # switches the teacher to the backend that computes σ.
    vllm = "teachers.gemma.backend=transformers"
    with pytest.raises(SpaceLogprobsMissing, match=vllm):
        check(cache, shards, space_logprobs=True, backend="vllm")
    manifest = read_manifest(cache)
    write_manifest(cache, dataclasses.replace(manifest, header={**manifest.header, "backend": "vllm"}))
    with pytest.raises(SpaceLogprobsMissing, match=vllm):
        check(cache, shards, space_logprobs=True)


def test_the_space_logprob_repair_refills_the_same_key_with_the_same_shards(tmp_path: Path) -> None:
    """A pre-σ cache keeps its key (extract finds it complete and loads nothing); the checker asked
    for σ names a repair which, run as printed, re-extracts exactly the shards a σ-aware extraction
    writes, after which the checker is clean."""
    config_path = write_config(tmp_path, tmp_path / "cache", [fake_teacher("a", max_shards=2)])
    config = load_config(config_path)
    directory = run_extraction(config, progress=False).plans[0].directory
    with_sigma = shard_hashes(directory)
    repairs = Repairs(str(config_path))
    assert cache_faults(directory, repairs, space_logprobs=True) == []
    strip_space_logprobs(directory)
    again = run_extraction(config, progress=False)
    assert again.plans[0].directory == directory and again.message == "all 2 units cached"
    assert cache_faults(directory, repairs) == []
    faults = cache_faults(directory, repairs, space_logprobs=True)
    assert len(faults) == 1 and "have no σ column" in faults[0].problem
    remove, extract = faults[0].repair.split(" && ")
    assert shlex.split(remove) == ["rm", "-rf", str(directory)]
    subprocess.run(shlex.split(remove), check=True)
    assert shlex.split(extract) == ["polyfuse", "extract", "--config", str(config_path), "--teacher", "a"]
    result = CliRunner().invoke(app, shlex.split(extract)[1:])
    assert result.exit_code == 0, result.output
    assert cache_faults(directory, repairs, space_logprobs=True) == []
    assert shard_hashes(directory) == with_sigma
