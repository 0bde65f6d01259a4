"""``polyfuse extract``: every teacher once over the corpus, resumable, on any rank of any node.

    prepare the corpus (implicitly) → plan every teacher (key, directory, shard slice; tokenizer
    and fingerprints only, no model) → the sorted list of units (teacher, shard) → this rank's
    units [rank::world_size] minus the finished ones → per teacher: load the backend, run its
    units, publish the manifest after each → stats JSON and a summary

Rank logic lives here only; ``stages/extract/extract.py`` runs one unit and knows nothing of
ranks. A unit is finished when its entry file exists (written after the shard's rename), so a
killed run resumes where it stopped, a run with another world size skips the same units, and a
rerun with nothing to do loads no model. The manifest is rebuilt from the entry files by whoever
finishes a unit, and is ``complete`` as soon as every planned shard has an entry.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_schemas.atomic import remove_stale_tmp, write_json_atomic
from data_schemas.keys import content_key
from data_schemas.manifest import Manifest, read_entries, read_manifest, refresh_manifest
from data_schemas.teacher_shard import SAMPLED_LAYOUT, TEACHER_SCHEMA_VERSION
from pipeline.config import Config, TeacherConfig
from pipeline.corpus import prepare_from_config
from pipeline.teacher_stats import domain_table, round_stat, teacher_sample_frame, teacher_summary
from stages.extract.backends import resolve_backend, resolve_dtype
from stages.extract.draws import DRAW_SEED
from stages.extract.settings import ExtractSettings
from stages.model_source import model_folder, resolve_model
from stages.prepare.prepare import PreparedCorpus, split_shards
from stages.world import World, resolve_world

logger = logging.getLogger(__name__)

KEY_SCHEMA_VERSION = 1
"""The shard format a teacher key names. Schema version 2 only added the optional σ column, which
this code reads with or without (``data_schemas/teacher_shard.py``), so a cache extracted before
σ keeps its key and every objective that does not need σ keeps reading it. A run that needs σ
asks the cache checker for it (``cache_check.space_logprob_fault``), whose repair removes the
σ-less shards and extracts them again under the same key (docs/reading-shards.md)."""
TEACHER_SPLIT = "train"
"""Teachers are run over the training split only; held-out text is for evaluation."""
STATS_NAME = "stats.json"


@dataclass(frozen=True)
class TeacherPlan:
    """Where one teacher's shards go and which corpus shards it reads; no model loaded."""

    name: str
    backend: str
    """Configured backend (``auto`` resolved only when the model is loaded)."""
    model_path: Path
    dtype: str
    add_special_tokens: bool
    key: str
    directory: Path
    header: dict[str, Any]
    corpus_shards: tuple[Path, ...]

    @property
    def planned(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.corpus_shards)


@dataclass(frozen=True, order=True)
class Unit:
    teacher: str
    shard: str


@dataclass
class TeacherRun:
    """What this process did for one teacher."""

    teacher: str
    units_done: int = 0
    units_cached: int = 0
    tokens: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    backend: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class ExtractionReport:
    world: World
    corpus: PreparedCorpus
    plans: list[TeacherPlan]
    runs: dict[str, TeacherRun] = field(default_factory=dict)
    units_total: int = 0
    units_cached: int = 0
    message: str = ""


# -- planning ----------------------------------------------------------------------------------


def prepare_shared_corpus(config: Config) -> PreparedCorpus:
    """Prepare the corpus; ranks started together all try, and all but one lose the final rename."""
    try:
        return prepare_from_config(config)
    except OSError:  # another rank renamed the same (content-keyed) corpus into place first
        return prepare_from_config(config)


def teacher_identity(teacher: TeacherConfig, backend: str) -> dict[str, Any]:
    """What identifies the model: its fingerprint, or the fake backend's name and version."""
    if backend == "fake":
        from stages.extract.backends.fake_backend import FAKE_VERSION

        return {"fake": teacher.name, "version": FAKE_VERSION}
    from stages.extract.model_fingerprint import model_fingerprint

    return {"fingerprint": model_fingerprint(teacher.path)}


def extraction_layout(ex: ExtractSettings) -> str:
    """The shard layout extraction writes: ``sampled`` for drawn tokens, else ``logprob_layout``."""
    return SAMPLED_LAYOUT if ex.draws else ex.logprob_layout


def plan_teacher(
    config: Config, teacher: TeacherConfig, corpus: PreparedCorpus, tokenizer: Any
) -> TeacherPlan:
    """Key, directory, header and shard slice of one teacher (tokenizer loaded by the caller)."""
    from stages.tokenization import tokenizer_fingerprint

    ex = config.extract
    backend = teacher.backend or ex.backend
    dtype = resolve_dtype(teacher.dtype or ex.dtype, resolve_backend(backend))
    # None: the tokenizer's own default, which adds BOS where the model was trained with one.
    add_special = True if teacher.add_special_tokens is None else teacher.add_special_tokens
    model = teacher_identity(teacher, backend)
    keyed = {
        "model": model,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "top_k": ex.top_k,
        "max_tokens": ex.max_tokens,
        "dtype": dtype,
        "add_special_tokens": add_special,
        "logprob_layout": extraction_layout(ex),
        "schema_version": KEY_SCHEMA_VERSION,
    }
    if ex.draws:  # keys of top-k caches stay what they were before draws existed
        keyed["draws"] = ex.draws
        keyed["draw_seed"] = DRAW_SEED
    key = content_key(keyed)
    source = resolve_model(teacher.path)  # once per process; the fingerprint above holds its commit
    shards = tuple(split_shards(corpus.directory, TEACHER_SPLIT)[: teacher.max_shards])
    header = {
        **keyed,
        "teacher": teacher.name,
        "model_path": str(teacher.path),
        **({"model_revision": source.revision} if source.revision else {}),  # a hub id's commit
        "vocab_size": len(tokenizer),
        "corpus_key": corpus.key,
        "corpus_split": TEACHER_SPLIT,
    }
    directory = Path(config.cache_dir) / "teachers" / key / corpus.key
    return TeacherPlan(
        teacher.name, backend, source.folder, dtype, add_special, key, directory, header, shards
    )


def load_teacher_tokenizer(teacher: TeacherConfig, backend: str) -> Any:
    from stages.extract.model_fingerprint import check_model_folder
    from stages.model_config import check_causal_lm, check_tokenizer_fits
    from stages.tokenization import load_tokenizer

    try:
        if backend == "fake":  # no model: a tokenizer folder is enough
            return load_tokenizer(model_folder(teacher.path))
        folder = check_model_folder(teacher.path)
        check_causal_lm(folder, "teachers[].path")
        tokenizer = load_tokenizer(folder)
        check_tokenizer_fits(tokenizer, folder, "teachers[].path")  # before any weights load
        return tokenizer
    except ValueError as e:
        raise ValueError(f"teacher {teacher.name}: {e}") from e


def plan_units(plans: list[TeacherPlan]) -> list[Unit]:
    """Every unit of the run, sorted: the list every rank strides through."""
    return sorted(Unit(p.name, shard) for p in plans for shard in p.planned)


def finished_shards(plan: TeacherPlan) -> set[str]:
    """Shards with an entry file and a file of the entry's size. A shard cut off (or resized) after
    its entry was written is not finished: it is extracted again. Same-size damage is found by
    ``polyfuse validate`` and ``distill``, which read every byte; this costs a stat per shard."""
    if not plan.directory.exists():
        return set()
    remove_stale_tmp(plan.directory)  # leftovers of killed writers only, never a live one's
    done = set()
    for entry in read_entries(plan.directory):
        if (plan.directory / entry.name).stat().st_size == entry.bytes:
            done.add(entry.name)
        else:
            logger.warning(
                "%s: size differs from its entry: extracting it again", plan.directory / entry.name
            )
    return done


def publish_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Rebuild the manifest from the entry files until no entry appeared meanwhile, so that two
    ranks finishing at the same moment cannot leave a manifest that misses one of them."""
    while True:
        published = refresh_manifest(directory, manifest)
        if [e.name for e in read_entries(directory)] == [s.name for s in published.shards]:
            return published


# -- running -----------------------------------------------------------------------------------


def run_extraction(
    config: Config,
    *,
    teacher: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    finalize: bool = False,
    progress: bool = True,
) -> ExtractionReport:
    """Run this rank's share of stage one (see the module docstring)."""
    world = resolve_world(rank, world_size)
    teachers = [config.teacher(teacher)] if teacher else list(config.teachers)
    if not teachers:
        raise ValueError("the config has no teachers: add a `teachers:` list (name and path of each model)")
    corpus = prepare_shared_corpus(config)
    tokenizers = {t.name: load_teacher_tokenizer(t, t.backend or config.extract.backend) for t in teachers}
    plans = [plan_teacher(config, t, corpus, tokenizers[t.name]) for t in teachers]
    units = plan_units(plans)
    done = {p.name: finished_shards(p) for p in plans}
    todo = [u for u in units[world.rank :: world.world_size] if u.shard not in done[u.teacher]]
    report = ExtractionReport(world, corpus, plans, units_total=len(units))
    report.units_cached = sum(u.shard in done[u.teacher] for u in units)

    if finalize or not todo:
        for plan in plans:
            if finalize or world.rank == 0:
                _republish(plan)
        report.message = _idle_message(report, world, finalize)
        return report

    for plan in plans:
        mine = [u for u in todo if u.teacher == plan.name]
        run = report.runs.setdefault(plan.name, TeacherRun(plan.name))
        run.units_cached = sum(
            u.shard in done[plan.name]
            for u in units[world.rank :: world.world_size]
            if u.teacher == plan.name
        )
        if mine:
            _run_teacher(config, plan, tokenizers[plan.name], mine, run, world, progress)
    report.message = f"rank {world.rank}/{world.world_size}: {len(todo)} unit(s) extracted"
    return report


def _idle_message(report: ExtractionReport, world: World, finalize: bool) -> str:
    missing = report.units_total - report.units_cached
    if missing == 0:
        return f"all {report.units_total} units cached"
    if finalize:
        return f"manifests rebuilt; {missing} of {report.units_total} units missing: run `polyfuse extract`"
    return (
        f"rank {world.rank}/{world.world_size}: all its units are cached; {missing} of "
        f"{report.units_total} units are other ranks' and still missing"
    )


def _republish(plan: TeacherPlan) -> None:
    """Rewrite the manifest from the entry files with the current plan (e.g. a changed
    max_shards, or a manifest deleted by hand); nothing when nothing was extracted yet."""
    if (plan.directory / "manifest.json").exists():
        header = read_manifest(plan.directory).header
    elif finished_shards(plan):
        header = plan.header  # the backend that wrote the shards is no longer known
    else:
        return
    publish_manifest(
        plan.directory, Manifest("teacher", plan.key, TEACHER_SCHEMA_VERSION, header, plan.planned)
    )


def _run_teacher(
    config: Config,
    plan: TeacherPlan,
    tokenizer: Any,
    units: list[Unit],
    run: TeacherRun,
    world: World,
    progress: bool,
) -> None:
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from stages.align.token_text import build_token_table, space_mask
    from stages.extract.backends import open_backend
    from stages.extract.extract import extract_shard

    ex = config.extract
    shard_paths = {p.name: p for p in plan.corpus_shards}
    # The bar counts samples, which the Parquet footers hold: tokens would need every shard
    # tokenised once more before the first forward pass.
    total = sum(pq.read_metadata(shard_paths[u.shard]).num_rows for u in units)
    backend_name = resolve_backend(plan.backend)
    logger.info(
        "teacher %s: loading %s with %s (%d units, %d samples)",
        plan.name,
        plan.model_path,
        backend_name,
        len(units),
        total,
    )
    start = time.perf_counter()
    backend = open_backend(
        backend_name,
        teacher=plan.name,
        model_path=plan.model_path,
        settings=ex,
        dtype=plan.dtype,
        vocab_size=plan.header["vocab_size"],
        space_mask=space_mask(build_token_table(tokenizer)),
    )
    run.load_seconds = time.perf_counter() - start
    run.backend = f"{backend.name} {backend.version}"
    header = {
        **plan.header,
        "backend": backend.name,
        "backend_version": backend.version,
        "logprobs_mode": backend.logprobs_mode,
    }
    manifest = Manifest("teacher", plan.key, TEACHER_SCHEMA_VERSION, header, plan.planned)
    publish_manifest(plan.directory, manifest)  # the directory says what it will hold from the start
    bar = tqdm(
        total=total,
        desc=f"extract {plan.name}",
        unit="sample",
        dynamic_ncols=True,
        disable=not (progress and world.rank == 0),  # one bar per teacher, on rank 0 only
    )
    start = time.perf_counter()
    try:
        for unit in units:
            result = extract_shard(
                shard_paths[unit.shard],
                plan.directory / unit.shard,
                backend,
                tokenizer,
                teacher=plan.name,
                top_k=ex.top_k,
                max_tokens=ex.max_tokens,
                add_special_tokens=plan.add_special_tokens,
                layout=extraction_layout(ex),
                draws=ex.draws,
                on_samples=bar.update,
            )
            run.units_done += 1
            run.tokens += result.tokens
            published = publish_manifest(plan.directory, manifest)
            logger.log(
                logging.INFO if bar.disable else logging.DEBUG,
                "teacher %s: %s done (%d tokens, %.1f B/token); %d/%d shards present",
                plan.name,
                unit.shard,
                result.tokens,
                result.entry.bytes / max(result.tokens, 1),
                len(published.shards),
                len(plan.planned),
            )
    finally:
        run.seconds = time.perf_counter() - start
        bar.close()
        backend.close()
    write_stats(plan, run, world)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_stats(plan: TeacherPlan, run: TeacherRun, world: World) -> None:
    """``stats.json`` beside the manifest: totals and per-domain means over every present shard,
    and this run's throughput."""
    frame = teacher_sample_frame(plan.directory)
    stats = teacher_summary(frame, plan.directory)
    stats["last_run"] = {
        "rank": world.rank,
        "world_size": world.world_size,
        "backend": run.backend,
        "units": run.units_done,
        "tokens": run.tokens,
        "seconds": round(run.seconds, 2),
        "load_seconds": round(run.load_seconds, 2),
        "tokens_per_s": round(run.tokens_per_s, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    write_json_atomic(plan.directory / STATS_NAME, stats)


def summary_tables(report: ExtractionReport) -> list[tuple[str, list[dict[str, Any]]]]:
    """The end-of-run tables: one row per teacher (this run's throughput beside the cache's
    totals), and one per teacher and domain."""
    teachers, domains = [], []
    for plan in report.plans:
        if not (plan.directory / "manifest.json").exists():
            teachers.append({"teacher": plan.name, "shards": f"0/{len(plan.planned)}"})
            continue
        frame = teacher_sample_frame(plan.directory)
        summary = teacher_summary(frame, plan.directory)
        run = report.runs.get(plan.name)
        teachers.append(
            {
                "teacher": plan.name,
                "backend": run.backend if run and run.units_done else "cached",
                "run_tokens": run.tokens if run else 0,
                "run_s": round(run.seconds, 1) if run else 0.0,
                "tok_per_s": round(run.tokens_per_s, 1) if run else None,
                "shards": summary["shards"],
                "complete": summary["complete"],
                "tokens": summary.get("tokens"),
                "bytes_per_token": summary["bytes_per_token"],
                "ce": summary.get("ce"),
                "bits_per_byte": summary.get("bits_per_byte"),
                "truncated": summary.get("truncated"),
            }
        )
        for row in domain_table(frame).to_dicts():
            domains.append({"teacher": plan.name, **{k: round_stat(v) for k, v in row.items()}})
    return [("teachers", teachers), ("per teacher and domain", domains)]
