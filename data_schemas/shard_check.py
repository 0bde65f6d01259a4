"""The one check of a listed shard, corpus or teacher alike: what ``validate`` reports and what
``distill`` refuses before it loads a model (docs/design.md §3.5).

A shard listed in a manifest is sound when its file is present, has the listed size and sha256,
decodes completely under its schema, holds the listed rows (and, for a teacher shard, the listed
tokens), and — for a teacher shard — holds only finite logprobs and scores in sorted top-k rows.
Checks run cheapest first and stop at the first failing one, so a damaged file gets one fault.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from data_schemas.atomic import stale_tmp_files
from data_schemas.corpus_shard import CORPUS_SCHEMA
from data_schemas.keys import sha256_file
from data_schemas.manifest import ShardEntry
from data_schemas.parquet_io import read_shard
from data_schemas.teacher_shard import check_teacher_table, read_teacher_shard

TMP_SUFFIX = ".tmp"


def read_shard_table(path: Path, kind: str, columns: list[str] | None = None) -> pa.Table:
    """Read a corpus or teacher shard in full; ``RuntimeError`` naming the file if it does not
    decode (a flipped byte inside a compressed page, a cut-off file, another schema)."""
    try:
        if kind == "teacher":
            return read_teacher_shard(path, columns=columns)
        return read_shard(path, CORPUS_SCHEMA, columns=columns)
    except RuntimeError:
        raise
    except (OSError, pa.ArrowException, ValueError) as e:
        raise RuntimeError(f"{path} does not decode ({type(e).__name__}: {e})") from e


def shard_faults(path: Path, entry: ShardEntry, kind: str, *, checksums: bool = True) -> list[str]:
    """Faults of one listed shard (empty: sound), without the path prefix.

    ``checksums=False`` skips the sha256 and the full decode (a stat only): for ranks after the
    first, or a quick look.
    """
    if not path.is_file():
        return ["listed in the manifest but missing"]
    size = path.stat().st_size
    if size != entry.bytes:
        return [f"{size} bytes on disk, manifest says {entry.bytes}"]
    if not checksums:
        return []
    if sha256_file(path) != entry.sha256:
        return ["sha256 differs from the manifest (file corrupted)"]
    try:
        table = read_shard_table(path, kind)
    except RuntimeError as e:
        return [str(e).removeprefix(f"{path} ").removeprefix(f"{path}: ")]
    if table.num_rows != entry.rows:
        return [f"{table.num_rows} rows, manifest says {entry.rows}"]
    if kind != "teacher":
        return [] if entry.tokens == 0 else [f"manifest says {entry.tokens} tokens, a corpus shard has 0"]
    tokens = int(pc.sum(table.column("n_tokens")).as_py() or 0)
    if tokens != entry.tokens:
        return [f"{tokens} tokens, manifest says {entry.tokens}"]
    return check_teacher_table(table)


def sample_id_fault(teacher_shard: Path, corpus_shard: Path) -> str | None:
    """Why ``teacher_shard`` does not mirror ``corpus_shard`` row by row (None: it does)."""
    try:
        want = read_shard_table(corpus_shard, "corpus", ["sample_id"]).column(0).to_pylist()
        got = read_shard_table(teacher_shard, "teacher", ["sample_id"]).column(0).to_pylist()
    except RuntimeError as e:
        return str(e)
    if want == got:
        return None
    row = next(
        (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got))
    )
    found = got[row] if row < len(got) else None
    expected = want[row] if row < len(want) else None
    return f"sample ids differ from the corpus shard {corpus_shard} (row {row}: {found!r} vs {expected!r})"


def stray_tmp_files(directory: Path) -> list[Path]:
    """``*.tmp`` files and folders in ``directory`` and its split folders whose writer is gone."""
    return [*stale_tmp_files(directory), *stale_tmp_files(directory, f"*/*{TMP_SUFFIX}")]
