"""Teacher shards as plain tables: real logprobs for readers that know nothing of polyfuse.

A teacher shard stores its logprobs in a compact layout (``quant``: integers on a 1/32-nat grid;
see ``teacher_shard.py``), which only ``decode_table`` understands. This module turns one shard,
or every shard of a teacher directory (in manifest order), into the plain columns of docs/design.md §3.3,
one row per sample, so that polars, duckdb or ``datasets`` read them as they are
(docs/reading-shards.md):

    sample_id       string
    token_ids       list<int32>    [n]       the teacher's tokens of the sample's text
    token_ends      list<int32>    [n]       end char offset of each token
    topk_ids        list<int32>    [(n−1)·k] row-major: row i = the k likeliest ids of token i+1
    topk_logprobs   list<float32>  [(n−1)·k] sorted descending within each row
    target_logprob  list<float32>  [n−1]     logprob of the actual token i+1
    space_logprob   list<float32>  [n−1]     log σ: log P(token i+1 starts a new word); null
                                             where the shard has no σ (``teacher_shard.py``)
    ce, bits_per_byte, topk_mass, entropy_topk   float32;  n_tokens int32;  truncated bool

k is in the metadata (``polyfuse.top_k``) and equals len(topk_ids) / (n_tokens − 1). Any further
array a layout decodes to (a ``TeacherSample`` field beyond these, e.g. the draw counts of a
``sampled`` shard) becomes one more list column of its own dtype, flattened row-major. Values
are the decoded ones: the layout's rounding (≤ 1/64 nat for ``quant``) stays in them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_schemas.atomic import atomic_path
from data_schemas.manifest import MANIFEST_NAME, read_manifest
from data_schemas.parquet_io import with_version
from data_schemas.teacher_shard import TeacherSample, decode_table, read_teacher_shard, shard_layout

PLAIN_KIND = "teacher_plain"
PLAIN_VERSION = 1
TOP_K_KEY = b"polyfuse.top_k"
SOURCE_LAYOUT_KEY = b"polyfuse.source_layout"
FLOAT32 = pa.float32()
"""Default type of the logprob columns (``pa.float16()`` halves them, at 2⁻¹¹ relative rounding)."""
SCORES = ("ce", "bits_per_byte", "topk_mass", "entropy_topk")
_KNOWN = {
    "sample_id",
    "token_ids",
    "token_ends",
    "topk_ids",
    "topk_logprobs",
    "target_logprobs",
    "space_logprobs",
    "truncated",
    *SCORES,
}


def _list_column(parts: Sequence[np.ndarray], item: pa.DataType) -> pa.ListArray:
    """One list per array of ``parts`` (each flattened row-major), as an Arrow list column."""
    flat = [np.asarray(p).ravel() for p in parts]
    offsets = np.zeros(len(flat) + 1, np.int32)
    np.cumsum([len(p) for p in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(item.to_pandas_dtype())))


def _extra_column(values: list[object]) -> pa.Array | None:
    """A column for a ``TeacherSample`` field this module does not know (None when never set)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, np.ndarray) for v in present):
        item = pa.from_numpy_dtype(present[0].dtype)
        return pa.array([None if v is None else v.ravel() for v in values], pa.list_(item))
    return pa.array(values)


def plain_table(
    samples: Sequence[TeacherSample], *, top_k: int, source_layout: str, logprobs: pa.DataType = FLOAT32
) -> pa.Table:
    """The plain table of decoded ``samples`` (module docstring); ``logprobs``: float32 or float16."""
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array([s.sample_id for s in samples], pa.string()),
        "token_ids": _list_column([s.token_ids for s in samples], pa.int32()),
        "token_ends": _list_column([s.token_ends for s in samples], pa.int32()),
        "topk_ids": _list_column([s.topk_ids for s in samples], pa.int32()),
        "topk_logprobs": _list_column([s.topk_logprobs for s in samples], logprobs),
        "target_logprob": _list_column([s.target_logprobs for s in samples], logprobs),
        # Always present (null without σ), so that shards with and without σ share one schema.
        "space_logprob": pa.array(
            [
                None if s.space_logprobs is None else s.space_logprobs.astype(logprobs.to_pandas_dtype())
                for s in samples
            ],
            pa.list_(logprobs),
        ),
    }
    for name in SCORES:
        columns[name] = pa.array([getattr(s, name) for s in samples], pa.float32())
    columns["n_tokens"] = pa.array([s.n_tokens for s in samples], pa.int32())
    columns["truncated"] = pa.array([s.truncated for s in samples], pa.bool_())
    for f in fields(samples[0] if samples else TeacherSample):  # a layout's further arrays
        if f.name not in _KNOWN:
            column = _extra_column([getattr(s, f.name) for s in samples])
            if column is not None:
                columns[f.name] = column
    table = pa.table(columns)
    schema = with_version(table.schema, kind=PLAIN_KIND, version=PLAIN_VERSION)
    return table.replace_schema_metadata(
        {**schema.metadata, TOP_K_KEY: str(top_k).encode(), SOURCE_LAYOUT_KEY: source_layout.encode()}
    )


def teacher_shard_paths(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself if it is a shard; else the finished shards of the teacher directory at
    ``path`` (or of its ``manifest.json``) in manifest order."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    directory = path.parent if path.name == MANIFEST_NAME else path
    if not (directory / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{path} is neither a teacher shard nor a teacher directory (no {MANIFEST_NAME}): pass "
            "e.g. cache/teachers/<teacher_key>/<corpus_key>"
        )
    manifest = read_manifest(directory)
    if manifest.kind != "teacher":
        raise ValueError(
            f"{directory} holds a {manifest.kind} cache, not a teacher's: pass a teacher directory"
        )
    return [directory / entry.name for entry in manifest.shards]


def iter_plain_tables(path: str | os.PathLike[str], *, logprobs: pa.DataType = FLOAT32) -> Iterator[pa.Table]:
    """The plain table of each shard of ``path`` (``teacher_shard_paths``), one at a time."""
    for shard in teacher_shard_paths(path):
        table = read_teacher_shard(shard)
        layout, top_k = shard_layout(table.schema)
        yield plain_table(decode_table(table), top_k=top_k, source_layout=layout, logprobs=logprobs)


def read_plain(path: str | os.PathLike[str], *, logprobs: pa.DataType = FLOAT32) -> pa.Table:
    """A teacher shard, or all shards of a teacher directory, as one plain Arrow table."""
    tables = list(iter_plain_tables(path, logprobs=logprobs))
    if not tables:
        raise ValueError(f"{path} has no finished shards yet: run `polyfuse extract` first")
    return pa.concat_tables(tables)


def write_plain(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    logprobs: pa.DataType = FLOAT32,
    compression_level: int | None = None,
) -> tuple[int, int]:
    """Write ``read_plain(path)`` to the Parquet file ``out`` (zstd, atomically), one shard in
    memory at a time; return (samples, tokens)."""
    rows = tokens = 0
    writer = None
    with atomic_path(out) as tmp:
        try:
            for table in iter_plain_tables(path, logprobs=logprobs):
                if writer is None:
                    writer = pq.ParquetWriter(
                        tmp, table.schema, compression="zstd", compression_level=compression_level
                    )
                writer.write_table(table)
                rows += table.num_rows
                tokens += int(pc.sum(table.column("n_tokens")).as_py() or 0)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{path} has no finished shards yet: run `polyfuse extract` first")
    return rows, tokens
