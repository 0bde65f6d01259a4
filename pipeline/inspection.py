"""``polyfuse inspect`` and ``polyfuse validate``: what a cache holds, and whether it is sound.

Both accept any path of a cache: the root, ``cache/teachers``, one teacher/corpus directory (or its
``manifest.json``), or a single shard. Directories are searched for ``manifest.json`` files; each
one is a corpus split set or a teacher over a corpus. Tables are polars DataFrames.

``validate`` collects every fault instead of stopping at the first one, and gives each one the
command that repairs it. Faults: unreadable manifest, entries the manifest misses, missing or
resized files, checksum mismatches, wrong schema kind/version, row counts, sample ids that differ
from the corpus shard, NaN/inf values, unsorted top-k, an incomplete teacher directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from data_schemas.corpus_shard import CORPUS_SCHEMA
from data_schemas.manifest import MANIFEST_NAME, Manifest, read_entries, read_manifest, verify_shards
from data_schemas.parquet_io import SCHEMA_KIND_KEY, check_schema
from data_schemas.teacher_shard import check_teacher_table, decode_table, read_teacher_shard
from pipeline.teacher_stats import (
    SAMPLE_COLUMNS,
    corpus_shard_of,
    domain_table,
    teacher_sample_frame,
    teacher_summary,
)

# -- locating things ---------------------------------------------------------------------------


def manifest_dirs(path: Path) -> list[Path]:
    """Directories under (or at) ``path`` that hold a manifest, sorted."""
    if path.is_file():
        path = path.parent
    if (path / MANIFEST_NAME).exists():
        return [path]
    return sorted(p.parent for p in path.rglob(MANIFEST_NAME))


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
    kind = file_kind(path)
    if kind == "corpus":
        table = pl.from_arrow(pq.read_table(path, columns=["sample_id", "domain", "text"]))
        return [("corpus samples", table.with_columns(chars=pl.col("text").str.len_chars()).drop("text"))]
    if kind != "teacher":
        raise ValueError(f"{path} is not a polyfuse shard (kind {kind!r}): pass a teacher or corpus shard")
    table = read_teacher_shard(path)
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


# -- validate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    path: str
    problem: str
    repair: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} → repair: {self.repair}"


def validate_path(path: Path, *, checksums: bool = True) -> list[Fault]:
    """Every fault found under ``path`` (empty list: the cache is sound)."""
    if not path.exists():
        raise ValueError(f"{path} does not exist: pass a cache directory, manifest or shard")
    if path.is_file() and path.suffix == ".parquet" and not (path.parent / MANIFEST_NAME).exists():
        return _validate_loose_shard(path)
    dirs = manifest_dirs(path)
    if not dirs:
        raise ValueError(f"{path} holds no polyfuse cache (no {MANIFEST_NAME} below it): pass e.g. cache/")
    faults: list[Fault] = []
    for directory in dirs:
        faults.extend(validate_dir(directory, checksums=checksums))
    return faults


def _validate_loose_shard(path: Path) -> list[Fault]:
    repair = f"delete {path} and extract it again"
    try:
        table = read_teacher_shard(path)
    except RuntimeError as e:
        return [Fault(str(path), str(e), repair)]
    return [Fault(str(path), problem, repair) for problem in check_teacher_table(table)]


def validate_dir(directory: Path, *, checksums: bool = True) -> list[Fault]:
    """Faults of one manifest directory (corpus or teacher)."""
    try:
        manifest = read_manifest(directory)
    except RuntimeError as e:
        return [Fault(str(directory / MANIFEST_NAME), str(e), _dir_repair(directory, None))]
    faults = []
    listed = {s.name for s in manifest.shards}
    unlisted = [e.name for e in read_entries(directory) if e.name not in listed]
    if unlisted:
        faults.append(
            Fault(
                str(directory / MANIFEST_NAME),
                f"misses finished shards {unlisted}",
                _finalize_repair(manifest),
            )
        )
    broken = set()
    for problem in verify_shards(directory, manifest, checksums=checksums):
        name = problem.split(":", 1)[0]
        broken.add(Path(name).relative_to(directory).as_posix())
        faults.append(Fault(name, problem.split(": ", 1)[1], _shard_repair(directory, manifest, Path(name))))
    for entry in manifest.shards:
        if entry.name in broken:
            continue
        shard = directory / entry.name
        faults.extend(
            Fault(str(shard), p, _shard_repair(directory, manifest, shard))
            for p in _shard_problems(directory, manifest, entry.name, entry.rows)
        )
    if manifest.kind == "teacher" and not manifest.complete:
        missing = len(manifest.missing())
        faults.append(
            Fault(
                str(directory),
                f"incomplete: {missing} of {len(manifest.planned)} shards missing",
                _extract_command(manifest),
            )
        )
    return faults


def _shard_problems(directory: Path, manifest: Manifest, name: str, rows: int) -> list[str]:
    path = directory / name
    try:
        if manifest.kind == "corpus":
            check_schema(path, CORPUS_SCHEMA)
            table = pq.read_table(path, columns=["sample_id"])
        else:
            table = read_teacher_shard(path)
    except RuntimeError as e:
        return [str(e).split(": ", 1)[-1] if str(e).startswith(str(path)) else str(e)]
    problems = []
    if table.num_rows != rows:
        problems.append(f"{table.num_rows} rows, manifest says {rows}")
    if manifest.kind == "teacher":
        problems.extend(check_teacher_table(table))
        corpus_shard = corpus_shard_of(directory, manifest.header, name)
        if not corpus_shard.exists():
            problems.append(f"its corpus shard {corpus_shard} is missing")
        elif (
            pq.read_table(corpus_shard, columns=["sample_id"]).column(0).to_pylist()
            != table.column("sample_id").to_pylist()
        ):
            problems.append(f"sample ids differ from the corpus shard {corpus_shard}")
    return problems


def _extract_command(manifest: Manifest) -> str:
    teacher = manifest.header.get("teacher")
    return (
        f"polyfuse extract --config CONFIG --teacher {teacher}"
        if teacher
        else "polyfuse extract --config CONFIG"
    )


def _finalize_repair(manifest: Manifest) -> str:
    if manifest.kind == "corpus":
        return "polyfuse prepare --config CONFIG"
    return f"polyfuse extract --config CONFIG --teacher {manifest.header.get('teacher')} --finalize"


def _shard_repair(directory: Path, manifest: Manifest, shard: Path) -> str:
    if manifest.kind == "corpus":
        return _dir_repair(directory, manifest)
    return f"rm {shard} {shard}.entry.json && {_extract_command(manifest)}"


def _dir_repair(directory: Path, manifest: Manifest | None) -> str:
    if manifest is not None and manifest.kind == "teacher":
        return f"rm -r {directory} && {_extract_command(manifest)}"
    if manifest is None and "teachers" in directory.parts:
        return f"rm -r {directory} && polyfuse extract --config CONFIG"
    return f"rm -r {directory} && polyfuse prepare --config CONFIG (then polyfuse extract)"
