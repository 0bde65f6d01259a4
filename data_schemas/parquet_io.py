"""Writing and reading polyfuse Parquet shards: zstd, schema version in the metadata,
atomic rename, and a manifest entry computed from the bytes that landed on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_schemas.atomic import atomic_path
from data_schemas.keys import sha256_file
from data_schemas.manifest import ShardEntry

SCHEMA_VERSION_KEY = b"polyfuse.schema_version"
SCHEMA_KIND_KEY = b"polyfuse.kind"


def with_version(schema: pa.Schema, kind: str, version: int) -> pa.Schema:
    """``schema`` with the polyfuse kind and schema version in its metadata."""
    meta = dict(schema.metadata or {})
    meta[SCHEMA_KIND_KEY] = kind.encode()
    meta[SCHEMA_VERSION_KEY] = str(version).encode()
    return schema.with_metadata(meta)


def write_shard(
    table: pa.Table,
    path: str | os.PathLike[str],
    schema: pa.Schema,
    *,
    tokens: int = 0,
    row_group_size: int = 64,
) -> ShardEntry:
    """Write ``table`` (cast to ``schema``) to ``path`` atomically; return its manifest entry.

    Row groups are small so that a streaming reader holds only a few samples at a time.
    """
    path = Path(path)
    table = table.cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
    return ShardEntry(
        name=path.name,
        rows=table.num_rows,
        tokens=tokens,
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
    )


def check_schema(path: str | os.PathLike[str], schema: pa.Schema) -> pa.Schema:
    """Raise ``RuntimeError`` unless the file at ``path`` carries ``schema``'s kind, version
    and columns; return the file's schema."""
    try:
        found = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise RuntimeError(f"{path} is not a readable Parquet file ({e}): delete it and rerun") from e
    want_meta = schema.metadata or {}
    got_meta = found.metadata or {}
    for key in (SCHEMA_KIND_KEY, SCHEMA_VERSION_KEY):
        if got_meta.get(key) != want_meta.get(key):
            raise RuntimeError(
                f"{path}: {key.decode()} is {got_meta.get(key, b'missing').decode()}, expected "
                f"{want_meta.get(key, b'?').decode()}: the file was written by another polyfuse "
                "version or is not a polyfuse shard; delete the cache directory and rerun"
            )
    missing = [f.name for f in schema if f.name not in found.names]
    if missing:
        raise RuntimeError(f"{path} lacks columns {missing}: delete it and rerun")
    return found


def read_shard(path: str | os.PathLike[str], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read a shard after checking its schema kind and version."""
    check_schema(path, schema)
    return pq.read_table(path, columns=columns)
