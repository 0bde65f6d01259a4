"""The teacher-cache check distill runs before any model loads (`checked_teacher_shards`): the
same checker as `polyfuse validate`, on a private copy of a real fake-backend cache, damaged one
way at a time; each refusal names the teacher, the shard and a repair command."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from data_schemas.keys import sha256_file
from data_schemas.manifest import read_manifest, write_entry, write_manifest
from pipeline.cache_check import Repairs, TeacherCacheError, checked_teacher_shards
from pipeline.distillation import resolve_stream_inputs
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
