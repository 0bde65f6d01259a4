"""The check distill runs on every teacher cache before it loads anything (DESIGN.md §3).

A cache is refused — with the teacher, the shard and the repair command in the message — when its
manifest is missing or incomplete, was written over another corpus, lists a shard whose bytes or
checksum differ, holds a shard whose row count or sample ids differ from the corpus shard it
mirrors, or was extracted with another tokenizer than the teacher's folder now holds. The shard
checks themselves are `data_schemas/shard_check.py`'s, the same that `polyfuse validate` runs
(pipeline/distillation.py runs validate's whole checker first, for its repair commands). Only then
do the loader's workers read the shards, without checking again.
"""

from __future__ import annotations

from pathlib import Path

from data_schemas.manifest import read_manifest
from data_schemas.shard_check import sample_id_fault, shard_faults
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
    fix: str | None = None,
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
        checksums: compare sha256 of every shard with the manifest and decode it in full (finite
            values, sorted top-k, token counts); False: sizes only.
        fix: the command that re-extracts the teacher (pipeline/cache_check.py builds it with the
            user's --config); None: `polyfuse extract --teacher NAME`.
    """
    directory = Path(directory)
    fix = fix or repair_command(teacher)
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
            f"{corpus_key!r}: delete {directory} and run `{fix}`"
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
    for corpus in covered:  # only the shards this run reads (a teacher may hold more than max_shards)
        path = shards[corpus.name]
        entry = manifest.entry(path.name)
        assert entry is not None
        problems = shard_faults(path, entry, "teacher", checksums=checksums)
        if problems:
            raise TeacherCacheError(
                f"teacher {teacher!r}: {path}: {problems[0]}: delete the damaged shard and its .entry.json, "
                f"then run `{fix}`"
            )
        mismatch = sample_id_fault(path, corpus.path) if checksums else None
        if mismatch:
            raise TeacherCacheError(
                f"teacher {teacher!r}: shard {path} does not mirror corpus shard {corpus.name} ({mismatch}): "
                f"delete it and its .entry.json, then run `{fix}`"
            )
    return shards
