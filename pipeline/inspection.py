"""``polyfuse inspect`` and ``polyfuse validate``: what a cache holds, and whether it is sound.

Both accept any path of a cache: the root, ``cache/teachers``, one teacher/corpus directory (or its
``manifest.json``), or a single shard; ``inspect`` also takes a distill export folder and shows
its gate against the oracles (pipeline/experiment.py, stages/distill/gate_diagnostics.py). Directories are searched for ``manifest.json`` files; each
one is a corpus split set or a teacher over a corpus. Tables are polars DataFrames.

``validate`` collects every fault instead of stopping at the first one, and gives each one the
command that repairs it; the checks and repairs are pipeline/cache_check.py's, shared with distill
(docs/reliability.md lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from data_schemas.manifest import MANIFEST_NAME, Manifest, read_manifest
from data_schemas.parquet_io import SCHEMA_KIND_KEY
from data_schemas.shard_check import read_shard_table
from data_schemas.teacher_shard import check_teacher_table, decode_table
from pipeline.cache_check import Fault, Repairs, cache_faults
from pipeline.teacher_stats import (
    SAMPLE_COLUMNS,
    domain_table,
    teacher_sample_frame,
    teacher_summary,
)

# -- locating things ---------------------------------------------------------------------------


def manifest_dirs(path: Path) -> list[Path]:
    """Directories under (or at) ``path`` that hold a manifest, sorted; for a shard, the one
    directory whose manifest lists it (none for a shard outside a cache).

    Raises:
        ValueError: ``path`` is a file that is neither a shard nor a manifest (exit 2).
    """
    if path.is_file():
        if path.suffix == ".parquet":
            home = shard_home(path)
            return [home] if home is not None else []
        if path.name != MANIFEST_NAME:
            raise ValueError(
                f"{path} is neither a cache directory, a shard (.parquet) nor a {MANIFEST_NAME}: pass "
                "e.g. cache/, cache/teachers/KEY/CORPUS_KEY or one of its shards"
            )
        path = path.parent
    if (path / MANIFEST_NAME).exists():
        return [path]
    return sorted(p.parent for p in path.rglob(MANIFEST_NAME))


def shard_home(shard: Path) -> Path | None:
    """The directory whose manifest lists ``shard``: its own folder for a teacher shard, the
    folder above its split folder for a corpus shard (``train/shard-00000.parquet``); None for a
    shard no manifest lists."""
    for directory in (shard.parent, shard.parent.parent):
        if (directory / MANIFEST_NAME).exists():
            try:
                manifest = read_manifest(directory)
            except (RuntimeError, OSError):  # a damaged manifest: its own fault, validate names it
                return directory
            listed = {*manifest.planned, *(e.name for e in manifest.shards)}
            return directory if shard.relative_to(directory).as_posix() in listed else None
    return None


def file_kind(path: Path) -> str:
    """``teacher``, ``corpus`` or ``?`` from a Parquet file's polyfuse metadata."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # any unreadable file is simply of unknown kind here
        return "?"
    return meta.get(SCHEMA_KIND_KEY, b"?").decode()


# -- inspect -----------------------------------------------------------------------------------


def inspect_path(path: Path) -> list[tuple[str, pl.DataFrame]]:
    """Titled tables describing ``path`` (see the module docstring)."""
    if not path.exists():
        raise ValueError(f"{path} does not exist: pass a cache directory, manifest or shard")
    if path.is_file() and path.suffix == ".parquet":
        return _inspect_shard(path)
    if (path / "config.yaml").is_file() and (path / "config.json").is_file():  # a distill export
        from pipeline.experiment import export_gate_diagnostics

        return export_gate_diagnostics(path)
    dirs = manifest_dirs(path)
    if not dirs:
        raise ValueError(f"{path} holds no polyfuse cache (no {MANIFEST_NAME} below it): pass e.g. cache/")
    teachers, corpora, domains, shards = [], [], [], []
    for directory in dirs:
        try:
            manifest = read_manifest(directory)
        except RuntimeError as e:
            teachers.append({"teacher": "?", "teacher_key": directory.parent.name, "error": str(e)})
            continue
        if manifest.kind == "corpus":
            corpora.append(_corpus_row(directory, manifest))
            continue
        faults = cache_faults(directory, Repairs(), checksums=False)
        if faults:  # a shard that is cut off or missing: say so instead of failing to read it
            teachers.append(
                {
                    "teacher": manifest.header.get("teacher", "?"),
                    "teacher_key": manifest.key,
                    "error": str(faults[0]),
                }
            )
            continue
        frame = teacher_sample_frame(directory)
        summary = teacher_summary(frame, directory)
        summary.pop("per_domain")
        teachers.append(summary)
        name = manifest.header.get("teacher", "?")
        domains.extend({"teacher": name, **row} for row in domain_table(frame).to_dicts())
        if len(dirs) == 1:
            shards = [
                {
                    "shard": e.name,
                    "rows": e.rows,
                    "tokens": e.tokens,
                    "bytes": e.bytes,
                    "bytes_per_token": round(e.bytes / max(e.tokens, 1), 2),
                }
                for e in manifest.shards
            ]
    tables = [
        ("teachers", pl.DataFrame(teachers)),
        ("corpora", pl.DataFrame(corpora)),
        ("per teacher and domain", pl.DataFrame(domains)),
        ("shards", pl.DataFrame(shards)),
    ]
    return [(title, table) for title, table in tables if not table.is_empty()]


def _corpus_row(directory: Path, manifest: Manifest) -> dict[str, Any]:
    return {
        "directory": str(directory),
        "corpus_key": manifest.key,
        "complete": manifest.complete,
        **manifest.totals,
    }


def _inspect_shard(path: Path) -> list[tuple[str, pl.DataFrame]]:
    try:
        return _shard_tables(path)
    except (RuntimeError, ValueError) as e:
        # A shard of a cache that is cut off or damaged: name the fault and its repair.
        directory = shard_home(path)
        if directory is not None and (directory / MANIFEST_NAME).is_file():
            faults = [f for f in cache_faults(directory, Repairs()) if Path(f.path) == path]
            if faults:
                raise RuntimeError(str(faults[0])) from e
        raise


def _shard_tables(path: Path) -> list[tuple[str, pl.DataFrame]]:
    kind = file_kind(path)
    if kind == "corpus":
        table = pl.from_arrow(read_shard_table(path, "corpus", ["sample_id", "domain", "text"]))
        return [("corpus samples", table.with_columns(chars=pl.col("text").str.len_chars()).drop("text"))]
    if kind != "teacher":
        raise ValueError(f"{path} is not a polyfuse shard (kind {kind!r}): pass a teacher or corpus shard")
    table = read_shard_table(path, "teacher")
    samples = pl.from_arrow(table.select(SAMPLE_COLUMNS))
    first = next((s for s in decode_table(table) if len(s.target_logprobs)), None)
    preview = pl.DataFrame()
    if first is not None:
        top = min(3, first.topk_ids.shape[1])
        preview = pl.DataFrame(
            {
                "row": range(min(8, len(first.target_logprobs))),
                "next_id": first.token_ids[1:9],
                "target_logprob": first.target_logprobs[:8],
                **{f"top{r + 1}_id": first.topk_ids[:8, r] for r in range(top)},
                **{f"top{r + 1}_logprob": first.topk_logprobs[:8, r] for r in range(top)},
            }
        )
    title = f"first rows of {first.sample_id} (decoded)" if first is not None else "no rows"
    return [("samples", samples), (title, preview)]


def decode_path(path: Path, out: Path) -> tuple[int, int]:
    """``inspect --decode OUT``: a teacher shard, or every shard of one teacher directory, written
    to ``out`` as one Parquet file of plain float32 logprobs (data_schemas/plain_reader.py);
    returns (samples, tokens) written."""
    from data_schemas.plain_reader import write_plain

    if not path.exists():
        raise ValueError(f"{path} does not exist: pass a teacher directory or shard")
    dirs = [path] if path.is_file() else manifest_dirs(path)
    if len(dirs) != 1:
        raise ValueError(
            f"{path} holds {len(dirs)} cache directories: --decode takes one teacher directory "
            "(cache/teachers/<teacher_key>/<corpus_key>) or one shard"
        )
    return write_plain(dirs[0], out)


# -- validate ---------------------------------------------------------------------------------


def validate_path(path: Path, *, checksums: bool = True, repairs: Repairs | None = None) -> list[Fault]:
    """Every fault found under ``path`` (empty list: the cache is sound); repairs are written for
    ``repairs``' config (default: the CLI's default config)."""
    if not path.exists():
        raise ValueError(f"{path} does not exist: pass a cache directory, manifest or shard")
    repairs = repairs or Repairs()
    if path.is_file() and path.suffix == ".parquet" and shard_home(path) is None:
        return _validate_loose_shard(path)
    dirs = manifest_dirs(path)
    if not dirs:
        raise ValueError(f"{path} holds no polyfuse cache (no {MANIFEST_NAME} below it): pass e.g. cache/")
    faults: list[Fault] = []
    for directory in dirs:
        faults.extend(cache_faults(directory, repairs, checksums=checksums))
    return faults


def _validate_loose_shard(path: Path) -> list[Fault]:
    """A shard no manifest lists, checked as the kind its own metadata says (no checksum to
    compare: the manifest holds those)."""
    kind = file_kind(path)
    if kind not in ("corpus", "teacher"):
        raise ValueError(f"{path} is not a polyfuse shard (kind {kind!r}): pass a teacher or corpus shard")
    # Outside its cache nothing can rebuild this very file: the fix is its cache's.
    repair = f"delete {path}; validate the cache it was copied from"
    try:
        table = read_shard_table(path, kind)
    except RuntimeError as e:
        return [Fault(str(path), str(e), repair)]
    return (
        [Fault(str(path), problem, repair) for problem in check_teacher_table(table)]
        if kind == "teacher"
        else []
    )
