"""The one checker of corpus and teacher caches, and the commands that repair them.

``polyfuse validate`` reports every fault it returns; ``distill`` runs it over the corpus and the
shards it will read, and refuses on the first fault before any model loads; ``extract`` names its
repairs the same way. Every repair is a command line the user can paste, with the ``--config``
(and overrides) they ran with; running it leaves ``validate`` clean (tests/pipeline/test_repairs.py
runs each one).
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from data_schemas.manifest import ENTRY_SUFFIX, MANIFEST_NAME, Manifest, read_entry, read_manifest
from data_schemas.shard_check import sample_id_fault, shard_faults, stray_tmp_files
from data_schemas.teacher_shard import has_space_logprobs
from pipeline.teacher_stats import corpus_dir_of, corpus_shard_of

DEFAULT_CONFIG = "configs/demo.yaml"


@dataclass(frozen=True)
class Fault:
    path: str
    problem: str
    repair: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} → repair: {self.repair}"


@dataclass(frozen=True)
class Repairs:
    """Builds the repair commands for the config (and overrides) the user ran with."""

    config: str = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()

    def command(self, verb: str, *args: str) -> str:
        return shlex.join(["polyfuse", verb, "--config", self.config, *args, *self.overrides])

    def extract(
        self, teacher: str | None = None, *, finalize: bool = False, backend: str | None = None
    ) -> str:
        """``polyfuse extract`` (of one teacher; ``backend``: with that teacher's backend set)."""
        args = (["--teacher", teacher] if teacher else []) + (["--finalize"] if finalize else [])
        if backend is not None:
            assert teacher is not None, "a backend override names its teacher"
            args.append(f"teachers.{teacher}.backend={backend}")
        return self.command("extract", *args)

    def prepare(self) -> str:
        return self.command("prepare")

    @staticmethod
    def remove(paths: list[Path], then: str | None = None) -> str:
        """``rm -rf`` (never fails on a file already gone, so ``then`` always runs)."""
        rm = shlex.join(["rm", "-rf", *(str(p) for p in paths)])
        return f"{rm} && {then}" if then else rm


def repairs_note(path: Path, repairs: Repairs, *, guessed: bool) -> str:
    """What the printed repair commands assume, in plain words: a cache records neither the config
    nor the overrides it was built with, so a command repairs it only when they are the user's.
    ``guessed``: no --config was given (the default is assumed)."""
    from pipeline.config import load_config

    given = f"--config {repairs.config}" + (f" {shlex.join(repairs.overrides)}" if repairs.overrides else "")
    fix = f"rerun `polyfuse validate {shlex.quote(str(path))} --config CONFIG key=value ...` with them"
    if guessed:
        note = (
            f"note: the repairs above are written for {given} (validate's default) with no overrides; "
            f"if this cache was built with another config or with key=value overrides, {fix}"
        )
    else:
        note = (
            f"note: the repairs above are written for {given}; they repair this cache only if it was "
            f"built with that config and those overrides (add any you built it with: {fix})"
        )
    try:
        cache_dir = Path(load_config(repairs.config, list(repairs.overrides)).cache_dir).resolve()
    except ValueError:  # the config itself is wrong here: say so instead of any repair
        return f"{note}; {repairs.config} does not load here, so none of them will run as printed"
    if not path.resolve().is_relative_to(cache_dir):
        note += f"; {path} is not under that config's cache_dir {cache_dir}, so they would rebuild that one"
    return note


def entry_path(shard: Path) -> Path:
    return shard.with_name(f"{shard.name}{ENTRY_SUFFIX}")


def cache_faults(
    directory: Path,
    repairs: Repairs,
    *,
    checksums: bool = True,
    only: Collection[str] | None = None,
    corpus_key: str | None = None,
    strays: bool = True,
    tokenizer_fingerprint: str | None = None,
    space_logprobs: bool = False,
) -> list[Fault]:
    """Every fault of one manifest directory (corpus or teacher); empty: sound.

    Args:
        only: check only these shards (distill: the ones it reads, each of which must be there);
            None: every listed shard.
        corpus_key: the corpus the caller trains on; a teacher directory over another one is a fault.
        strays: report leftover ``*.tmp`` files of killed writers (they waste disk, harm no data).
        tokenizer_fingerprint: of the teacher tokenizer the caller will use; a teacher directory
            extracted with another one is a fault. None: not checked.
        space_logprobs: the caller needs σ (``space_logprob_fault``): teacher shards without it
            are a fault, once the directory is otherwise sound.
    """
    manifest_path = directory / MANIFEST_NAME
    if manifest_path.exists() and not manifest_path.is_file():  # no repair can write over it
        return [Fault(str(manifest_path), "is not a file", _manifest_repair(directory, repairs))]
    if not manifest_path.is_file():
        return [Fault(str(directory), "has no manifest (nothing extracted there yet)", repairs.extract())]
    try:
        manifest = read_manifest(directory)
    except RuntimeError as e:
        return [Fault(str(directory / MANIFEST_NAME), str(e), _manifest_repair(directory, repairs))]
    if manifest.kind == "corpus":
        rebuild = Repairs.remove([directory], repairs.prepare())
        faults = [
            Fault(str(directory / e.name), p, rebuild)
            for e in manifest.shards
            if only is None or e.name in only
            for p in shard_faults(directory / e.name, e, "corpus", checksums=checksums)
        ]
        return faults + (_stray_faults(directory) if strays else [])
    faults = _teacher_faults(directory, manifest, repairs, checksums, only, corpus_key, tokenizer_fingerprint)
    if space_logprobs and not faults:
        read = [directory / e.name for e in manifest.shards if only is None or e.name in only]
        space = space_logprob_fault(directory, read, repairs)
        faults += [space] if space else []
    return faults + (_stray_faults(directory) if strays else [])


class SpaceLogprobsMissing(ValueError):
    """A sound teacher cache without the σ a run needs: the config asks for more than the cache
    holds (exit 2); the message names the shards and the command that fills them."""


def space_logprob_fault(
    directory: Path, shards: list[Path], repairs: Repairs, *, backend: str | None = None
) -> Fault | None:
    """The fault of the teacher ``shards`` (of ``directory``) that carry no σ column, with the
    repair that gives them one; None when all have it. Reads each shard's footer only.

    σ-less shards were written before schema version 2 or by the vLLM backend, under the same
    teacher key as shards with σ (pipeline/extraction.py: KEY_SCHEMA_VERSION), so they count as
    finished: the repair removes them (the whole directory when none of its shards has σ) and
    extracts them again. With vLLM (the backend that wrote them, or ``backend``, the one the
    caller's config resolves to) the repair sets the teacher's backend to transformers, the
    backend that computes σ.
    """
    lacking = [path for path in shards if not has_space_logprobs(path)]
    if not lacking:
        return None
    manifest = read_manifest(directory)
    teacher = manifest.header.get("teacher")
    on_vllm = "vllm" in (manifest.header.get("backend"), backend)
    extract = repairs.extract(teacher, backend="transformers" if on_vllm and teacher else None)
    everything = {directory / e.name for e in manifest.shards} <= set(lacking)
    removed = [directory] if everything else [p for path in lacking for p in (path, entry_path(path))]
    names = ", ".join(p.name for p in lacking[:3]) + (
        f" (and {len(lacking) - 3} more)" if len(lacking) > 3 else ""
    )
    return Fault(
        str(directory),
        f"{len(lacking)} of the {len(shards)} shards read have no σ column (space_logprobs: written by "
        f"polyfuse before teacher schema version 2, or by the vLLM backend), which this run needs: {names}",
        Repairs.remove(removed, extract),
    )


class TeacherCacheError(RuntimeError):
    """A teacher cache distill cannot use; the message names the fault and its repair."""


def checked_teacher_shards(
    teacher: str,
    directory: Path,
    corpus_shards: list[str],
    corpus_key: str,
    repairs: Repairs,
    *,
    tokenizer_fingerprint: str | None = None,
    checksums: bool = True,
    space_logprobs: bool = False,
    backend: str | None = None,
) -> dict[str, Path]:
    """Corpus shard name → teacher shard path for the corpus train shards a run reads from one
    teacher, after ``cache_faults`` found none of them at fault; ``TeacherCacheError`` naming the
    teacher, the first fault and its repair otherwise. Teacher shards mirror the corpus train
    shards by file name (``train/shard-00003.parquet`` → ``shard-00003.parquet``).

    ``space_logprobs``: the run needs σ (e.g. σ-corrected chunk distillation); a sound cache whose
    shards lack it raises ``SpaceLogprobsMissing`` (a ValueError: exit 2) naming the command that
    fills it. ``backend``: the teacher's backend as the run's config resolves it (its repair then
    avoids vLLM, which writes no σ).
    """
    files = {name: Path(name).name for name in corpus_shards}
    faults = cache_faults(
        directory,
        repairs,
        checksums=checksums,
        only=set(files.values()),
        corpus_key=corpus_key,
        strays=False,
        tokenizer_fingerprint=tokenizer_fingerprint,
    )
    if faults:
        raise TeacherCacheError(f"teacher {teacher!r}: {faults[0]}{more_faults(faults)}")
    paths = {name: directory / file for name, file in files.items()}
    space = (
        space_logprob_fault(directory, list(paths.values()), repairs, backend=backend)
        if space_logprobs
        else None
    )
    if space is not None:
        raise SpaceLogprobsMissing(f"teacher {teacher!r}: {space}")
    return paths


def more_faults(faults: list[Fault]) -> str:
    """What a message naming only the first fault adds when there are more."""
    return f" (and {len(faults) - 1} more: `polyfuse validate` lists them)" if len(faults) > 1 else ""


def _teacher_faults(
    directory: Path,
    manifest: Manifest,
    repairs: Repairs,
    checksums: bool,
    only: Collection[str] | None,
    corpus_key: str | None,
    tokenizer_fingerprint: str | None,
) -> list[Fault]:
    teacher = manifest.header.get("teacher")
    extract = repairs.extract(teacher)
    found_key = manifest.header.get("corpus_key")
    if found_key != directory.name or (corpus_key is not None and found_key != corpus_key):
        # Copied or moved under another corpus: nothing in it can be trusted for this one.
        wanted = corpus_key or directory.name
        return [
            Fault(
                str(directory),
                f"was extracted over corpus {found_key!r} but lies under (or is used for) corpus {wanted!r}",
                Repairs.remove([directory], extract),
            )
        ]
    if (
        tokenizer_fingerprint is not None
        and manifest.header.get("tokenizer_fingerprint") != tokenizer_fingerprint
    ):
        return [
            Fault(
                str(directory),
                "was extracted with another tokenizer than the teacher's model folder holds now",
                Repairs.remove([directory], extract),
            )
        ]
    faults: list[Fault] = []
    entries, listed = {}, {s.name: s for s in manifest.shards}
    unplanned = sorted(set(only or ()) - set(manifest.planned))
    if unplanned:  # a teacher extracted over fewer shards than this run reads (max_shards raised)
        faults.append(Fault(str(directory), f"was not extracted over {unplanned[:3]}", extract))
    for path in sorted(directory.glob(f"*{ENTRY_SUFFIX}")):
        shard = path.with_name(path.name.removesuffix(ENTRY_SUFFIX))
        try:
            entries[shard.name] = read_entry(path)
        except RuntimeError as e:
            faults.append(
                Fault(str(path), str(e).removeprefix(f"{path} "), Repairs.remove([path, shard], extract))
            )
    finalize = repairs.extract(teacher, finalize=True)
    unlisted = [n for n in entries if n not in listed and (directory / n).is_file()]
    if unlisted:
        faults.append(Fault(str(directory / MANIFEST_NAME), f"misses finished shards {unlisted}", finalize))
    for name, entry in listed.items():
        if only is not None and name not in only:
            continue
        shard = directory / name
        redo = Repairs.remove([shard, entry_path(shard)], extract)
        if name in entries and entries[name] != entry:
            faults.append(Fault(str(shard), "its manifest entry differs from its .entry.json", finalize))
            continue
        problems = shard_faults(shard, entry, "teacher", checksums=checksums)
        corpus_shard = corpus_shard_of(directory, manifest.header, name)
        if not problems and checksums:
            if not corpus_shard.is_file():
                corpus_dir = corpus_dir_of(directory, manifest.header["corpus_key"])
                faults.append(
                    Fault(
                        str(shard),
                        f"its corpus shard {corpus_shard} is missing",
                        _corpus_repair(corpus_dir, repairs),
                    )
                )
                continue
            mismatch = sample_id_fault(shard, corpus_shard)
            problems = [mismatch] if mismatch else []
        faults.extend(Fault(str(shard), p, redo) for p in problems)
    if not manifest.complete:
        missing = len(manifest.missing())
        faults.append(
            Fault(str(directory), f"incomplete: {missing} of {len(manifest.planned)} shards missing", extract)
        )
    return faults


def _stray_faults(directory: Path) -> list[Fault]:
    stray = stray_tmp_files(directory)
    if not stray:
        return []
    names = ", ".join(p.name for p in stray[:3]) + (f" (and {len(stray) - 3} more)" if len(stray) > 3 else "")
    return [Fault(str(directory), f"holds leftovers of killed writers: {names}", Repairs.remove(stray))]


def _manifest_repair(directory: Path, repairs: Repairs) -> str:
    if directory.parent.name == "corpus":
        return _corpus_repair(directory, repairs)
    # The entry files still say which shards are finished: extract rebuilds the manifest from them.
    return Repairs.remove([directory / MANIFEST_NAME], repairs.extract())


def _corpus_repair(corpus_dir: Path, repairs: Repairs) -> str:
    # Preparation is deterministic: the rebuilt shards equal the ones the teachers mirror.
    return Repairs.remove([corpus_dir], repairs.prepare())
