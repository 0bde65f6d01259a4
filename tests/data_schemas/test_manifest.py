from pathlib import Path

import pyarrow as pa
import pytest

from data_schemas.manifest import (
    Manifest,
    ShardEntry,
    read_manifest,
    refresh_manifest,
    write_entry,
    write_manifest,
)
from data_schemas.parquet_io import with_version, write_shard
from data_schemas.shard_check import shard_faults

SCHEMA = with_version(pa.schema([pa.field("x", pa.int32())]), kind="test", version=1)


def _manifest() -> Manifest:
    return Manifest("teacher", "abc", 1, {"top_k": 10}, ("shard-00000.parquet", "shard-00001.parquet"))


def test_round_trip(tmp_path: Path) -> None:
    m = _manifest().with_entries([ShardEntry("shard-00000.parquet", 3, 30, 100, "ff")])
    write_manifest(tmp_path, m)
    back = read_manifest(tmp_path)
    assert back == m
    assert not back.complete and back.missing() == ["shard-00001.parquet"]
    assert back.totals == {"shards": 1, "rows": 3, "tokens": 30, "bytes": 100}


def test_entries_from_several_writers_complete_the_manifest(tmp_path: Path) -> None:
    base = _manifest()
    for i in range(2):
        table = pa.table({"x": pa.array([i, i + 1], pa.int32())})
        entry = write_shard(table, tmp_path / f"shard-0000{i}.parquet", SCHEMA, tokens=2)
        write_entry(tmp_path, entry)
    m = refresh_manifest(tmp_path, base)
    assert m.complete and [s.name for s in m.shards] == list(base.planned)
    assert read_manifest(tmp_path).complete
    # Present with the listed sizes (`checksums=False`: the test schema is no corpus shard's).
    assert [f for e in m.shards for f in shard_faults(tmp_path / e.name, e, "corpus", checksums=False)] == []


def test_verify_finds_truncation_and_flipped_byte(tmp_path: Path) -> None:
    table = pa.table({"x": pa.array(range(100), pa.int32())})
    a = write_shard(table, tmp_path / "shard-00000.parquet", SCHEMA)
    b = write_shard(table, tmp_path / "shard-00001.parquet", SCHEMA)
    path_a, path_b = tmp_path / a.name, tmp_path / b.name
    path_a.write_bytes(path_a.read_bytes()[:-10])
    data = bytearray(path_b.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path_b.write_bytes(bytes(data))
    (cut,) = shard_faults(path_a, a, "corpus")
    (flipped,) = shard_faults(path_b, b, "corpus")
    assert "bytes on disk" in cut and "sha256" in flipped


def test_missing_and_corrupt_manifest_are_runtime_errors(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="corrupt"):
        read_manifest(tmp_path)
