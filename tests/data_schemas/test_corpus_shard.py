from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schemas.corpus_shard import CORPUS_SCHEMA
from data_schemas.keys import content_key, sha256_ends, sha256_file
from data_schemas.parquet_io import check_schema, read_shard, with_version, write_shard

ROWS = [
    {
        "sample_id": "prose:0:0",
        "domain": "prose",
        "doc_id": "a",
        "chunk_index": 0,
        "text": "In the beginning ✓ é",
        "split_word": False,
    },
    {
        "sample_id": "code:3:1",
        "domain": "code",
        "doc_id": "json/decoder.py",
        "chunk_index": 1,
        "text": "def f():\n    return 1\n",
        "split_word": True,
    },
]


def test_corpus_shard_round_trip_pyarrow_and_polars(tmp_path: Path) -> None:
    path = tmp_path / "shard-00000.parquet"
    entry = write_shard(pa.Table.from_pylist(ROWS, CORPUS_SCHEMA), path, CORPUS_SCHEMA)
    assert entry.rows == 2 and entry.bytes == path.stat().st_size and entry.sha256 == sha256_file(path)
    assert read_shard(path, CORPUS_SCHEMA).to_pylist() == ROWS
    assert pl.read_parquet(path).to_dicts() == ROWS
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_schema_version_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "shard.parquet"
    newer = with_version(CORPUS_SCHEMA, kind="corpus", version=99)
    write_shard(pa.Table.from_pylist(ROWS, newer), path, newer)
    with pytest.raises(RuntimeError, match="schema_version is 99, expected 1"):
        check_schema(path, CORPUS_SCHEMA)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(RuntimeError, match="not a readable Parquet file"):
        check_schema(tmp_path / "junk.parquet", CORPUS_SCHEMA)


def test_content_keys_and_fingerprints(tmp_path: Path) -> None:
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    big = tmp_path / "w.bin"
    big.write_bytes(bytes(range(256)) * 20_000)
    before = sha256_ends(big, span=1024)
    data = bytearray(big.read_bytes())
    data[-1] ^= 1
    big.write_bytes(bytes(data))
    assert sha256_ends(big, span=1024) != before
