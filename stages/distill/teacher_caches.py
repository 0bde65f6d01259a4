"""The check distill runs on every teacher cache before it loads anything (DESIGN.md §3).

A cache is refused — with the teacher, the shard and the repair command in the message — when its
manifest is missing or incomplete, was written over another corpus, lists a shard whose bytes or
checksum differ, holds a shard whose row count or sample ids differ from the corpus shard it
mirrors, or was extracted with another tokenizer than the teacher's folder now holds. Only then
do the loader's workers read the shards, without checking again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from data_schemas.manifest import read_manifest, verify_shards
from stages.distill.loader import CorpusShard


class TeacherCacheError(RuntimeError):
    """A teacher cache distill cannot use; the message says how to repair it."""


def repair_command(teacher: str) -> str:
    return f"polyfuse extract --teacher {teacher}"


def teacher_shard_name(corpus_shard_name: str) -> str:
    """Teacher shards mirror the corpus *train* shards by file name (`train/shard-00003.parquet`
    → `shard-00003.parquet`)."""
    return Path(corpus_shard_name).name


def check_teacher_cache(
    teacher: str,
    directory: str | Path,
    corpus_shards: list[CorpusShard],
    corpus_key: str,
    *,
    max_shards: int | None = None,
    tokenizer_fingerprint: str | None = None,
    checksums: bool = True,
) -> dict[str, Path]:
    """Corpus shard name → teacher shard path of a sound cache; `TeacherCacheError` otherwise.

    Args:
        teacher: the teacher's name (for messages).
        directory: `cache/teachers/<teacher_key>/<corpus_key>/`.
        corpus_shards: the corpus train shards, in order.
        corpus_key: the corpus the run trains on.
        max_shards: the teacher covers only the first N corpus shards (TeacherConfig.max_shards).
        tokenizer_fingerprint: of the teacher tokenizer distill will use for the vocab map; must
            equal the one the cache was extracted with. None: not checked.
        checksums: compare sha256 of every shard with the manifest (reads every byte once).
    """
    directory = Path(directory)
    fix = repair_command(teacher)
    try:
        manifest = read_manifest(directory)
    except RuntimeError as e:
        raise TeacherCacheError(
            f"teacher {teacher!r} has no usable cache in {directory} ({e}): run `{fix}`"
        ) from e
    if not manifest.complete:
        missing = ", ".join(manifest.missing()[:3]) or "?"
        raise TeacherCacheError(
            f"teacher {teacher!r}: the cache {directory} is incomplete (missing {missing}): run `{fix}` to finish it"
        )
    found_key = manifest.header.get("corpus_key")
    if manifest.kind != "teacher" or found_key != corpus_key:
        raise TeacherCacheError(
            f"teacher {teacher!r}: {directory} was extracted over corpus {found_key!r}, this run trains on "
            f"{corpus_key!r}: run `{fix}`"
        )
    if (
        tokenizer_fingerprint is not None
        and manifest.header.get("tokenizer_fingerprint") != tokenizer_fingerprint
    ):
        raise TeacherCacheError(
            f"teacher {teacher!r}: the tokenizer in its model folder differs from the one {directory} was "
            f"extracted with: run `{fix}` (or restore the original tokenizer files)"
        )
    covered = corpus_shards if max_shards is None else corpus_shards[:max_shards]
    shards: dict[str, Path] = {}
    for corpus in covered:
        name = teacher_shard_name(corpus.name)
        entry = manifest.entry(name)
        if entry is None:
            raise TeacherCacheError(
                f"teacher {teacher!r}: shard {directory / name} (for corpus {corpus.name}) is not in the manifest: run `{fix}`"
            )
        if entry.rows != corpus.rows:
            raise TeacherCacheError(
                f"teacher {teacher!r}: shard {directory / name} has {entry.rows} rows, corpus shard "
                f"{corpus.name} has {corpus.rows}: delete {directory / name} and its .entry.json, then run `{fix}`"
            )
        shards[corpus.name] = directory / name
    # Verify only the shards this run reads (a teacher may hold more than its max_shards).
    used = tuple(e for e in manifest.shards if e.name in {p.name for p in shards.values()})
    faults = verify_shards(directory, replace(manifest, shards=used, complete=False), checksums=checksums)
    if faults:
        raise TeacherCacheError(
            f"teacher {teacher!r}: {faults[0]}{f' (and {len(faults) - 1} more)' if len(faults) > 1 else ''}: "
            f"delete the damaged shard and its .entry.json, then run `{fix}`"
        )
    for corpus in covered:
        _check_sample_ids(teacher, corpus, shards[corpus.name], fix)
    return shards


def _check_sample_ids(teacher: str, corpus: CorpusShard, path: Path, fix: str) -> None:
    want = pq.read_table(corpus.path, columns=["sample_id"]).column("sample_id").to_pylist()
    got = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
    if want != got:
        first = next(
            (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got))
        )
        raise TeacherCacheError(
            f"teacher {teacher!r}: shard {path} does not mirror corpus shard {corpus.name} (row {first}: "
            f"{got[first] if first < len(got) else None!r} vs {want[first] if first < len(want) else None!r}): "
            f"delete it and its .entry.json, then run `{fix}`"
        )
