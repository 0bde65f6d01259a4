"""The corpus shard: one row per sample (a chunk of a document), shared by every teacher
and the student so that all of them see exactly the same text."""

from __future__ import annotations

import pyarrow as pa

from data_schemas.parquet_io import with_version

CORPUS_SCHEMA_VERSION = 1

CORPUS_SCHEMA = with_version(
    pa.schema(
        [
            # Stable and unique: derived from source, document index and chunk index.
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("domain", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk_index", pa.int32(), nullable=False),
            pa.field("text", pa.large_string(), nullable=False),
            # True when a single word longer than max_chars had to be cut inside the word.
            pa.field("split_word", pa.bool_(), nullable=False),
        ]
    ),
    kind="corpus",
    version=CORPUS_SCHEMA_VERSION,
)

SPLITS = ("train", "heldout")


def shard_name(index: int) -> str:
    """File name of the ``index``-th shard of a split (teacher shards use the same names)."""
    return f"shard-{index:05d}.parquet"
