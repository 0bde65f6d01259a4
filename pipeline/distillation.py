"""``polyfuse distill``: stage two from a ``Config``.

    corpus (prepared by extract) → every teacher's cache found by the same plan extract used and
    checked (complete, same corpus, checksums, rows, sample ids) → vocab maps (cached per
    tokenizer pair) → the rank's FusionStream → the DeepSpeed recipe → runs/<name>/export

Nothing here loads a model: the only model distill ever loads is the student, inside the recipe,
after every check passed. Rank logic lives here: rank 0 prepares what is shared on disk (the
corpus, vocab maps) while the others wait, then every rank builds its own stream over the shards
`[rank::world_size]`. One process is a plain `polyfuse distill`; several come from the
`deepspeed` launcher or `torchrun` (`make distill GPUS=N`), which set RANK/WORLD_SIZE.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pipeline.cache_check import Repairs, cache_faults, checked_teacher_shards, more_faults
from pipeline.config import Config
from pipeline.extraction import TEACHER_SPLIT, load_teacher_tokenizer, plan_teacher, prepare_shared_corpus
from pipeline.output_dirs import check_writable, run_lock
from stages.extract.backends import resolve_backend
from stages.model_config import check_causal_lm, check_tokenizer_fits
from stages.model_source import model_folder, resolve_dataset, resolve_model
from stages.world import World

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistillRun:
    """What `polyfuse distill` reports (`summary_rows`, `loss_line`): the recipe's `DistillResult`
    with the strategy and teachers it trained with and whether this is the main rank."""

    strategy: str
    teacher_names: tuple[str, ...]
    steps: int
    export_dir: Path | None
    last_checkpoint: Path | None
    final_metrics: dict[str, Any]
    is_main: bool


def distill_from_config(
    config: Config,
    *,
    strategy: str | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    repairs: Repairs | None = None,
) -> DistillRun:
    """Check the inputs, then train and export (see the module docstring). ``repairs``: the
    user's --config and overrides, for the repair commands of cache faults."""
    from stages.distill import engine
    from stages.distill.recipe import RecipeRun, run_distill
    from stages.distill.strategies import parse_strategy

    # Workers fork after the parent used the Rust tokenizer (vocab maps): keep it single-threaded
    # there instead of letting `tokenizers` warn and disable itself in every worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config.check_distill_target()
    if strategy:  # --strategy: the section as if the YAML had said it
        config = replace(config, distill=replace(config.distill, strategy=strategy))
    names = [t.name for t in config.teachers]
    parsed = parse_strategy(config.distill.strategy, names)
    if not names and parsed.uses_fusion:
        raise ValueError(
            f"strategy {parsed.name!r} needs teachers: add a `teachers:` list or use --strategy none"
        )
    run_dir = Path(config.runs_dir) / config.name
    check_writable(config.cache_dir, "cache_dir")  # before anything loads: a model takes minutes
    env = engine.prepare_distributed_env()
    if env.world_size > 1:
        engine.init_distributed()
    stream_inputs = _rank_zero_first(
        env, lambda: resolve_stream_inputs(config, checksums=env.is_main, repairs=repairs)
    )
    # The caches are sound: now the run folder (before the student loads; a refused cache leaves none).
    check_writable(config.runs_dir, "runs_dir")
    stream = build_stream(config, stream_inputs, rank=env.rank, world_size=env.world_size)
    run = RecipeRun(
        run_dir=run_dir,
        student_path=model_folder(config.student.path),
        strategy=parsed,
        world=env,
        seed=config.seed,
        resume=resume,
        stop_after_steps=stop_after_steps,
        progress=progress,
        export_files={"config.yaml": export_config_yaml(config, stream_inputs)},
        input_keys=stream_inputs.input_keys,
    )
    with run_lock(run_dir) if env.is_main else contextlib.nullcontext():
        result = run_distill(config.distill, run, stream)
    return DistillRun(
        strategy=parsed.name,
        teacher_names=tuple(names),
        steps=result.steps,
        export_dir=result.export_dir,
        last_checkpoint=result.last_checkpoint,
        final_metrics=result.final_metrics,
        is_main=env.is_main,
    )


@dataclass(frozen=True)
class StreamInputs:
    """Everything the loader needs that comes from disk, checked."""

    corpus_key: str
    corpus_shards: list[Any]
    """`loader.CorpusShard`s of the train split, in order."""
    teachers: list[Any]
    """`loader.TeacherSource`s, in config order."""
    teacher_keys: dict[str, str] = field(default_factory=dict)
    """teacher name → teacher_key of the cache it was read from."""

    @property
    def input_keys(self) -> dict[str, str]:
        """``corpus_key`` and ``teacher_key NAME`` → key: what the data of a run is, as the
        export's config.yaml heads it and a resume compares it."""
        return {
            "corpus_key": self.corpus_key,
            **{f"teacher_key {n}": k for n, k in self.teacher_keys.items()},
        }


def resolve_stream_inputs(
    config: Config, *, checksums: bool = True, repairs: Repairs | None = None
) -> StreamInputs:
    """Find and check the corpus and every teacher cache; build (or load) the vocab maps.

    The checks are `polyfuse validate`'s (pipeline/cache_check.py): a fault validate reports is a
    fault distill refuses, before any model loads. `checksums=False` skips re-hashing and decoding
    every shard (ranks after rank 0, which already did).

    Raises:
        ValueError: a student tokenizer without offsets, a missing teacher folder.
        TeacherCacheError (RuntimeError): a teacher cache that is missing, incomplete, corrupt or
            from another corpus — named, with its repair command (pipeline/cache_check.py).
    """
    from stages.align.token_text import build_token_table
    from stages.align.vocab_map import load_or_build_vocab_map
    from stages.distill.loader import CorpusShard, TeacherSource
    from stages.tokenization import load_tokenizer

    repairs = repairs or Repairs()
    corpus = prepare_shared_corpus(config)
    faults = cache_faults(corpus.directory, repairs, checksums=checksums, strays=False)
    if faults:
        raise RuntimeError(f"corpus {corpus.key}: {faults[0]}{more_faults(faults)}")
    shards = [
        CorpusShard(entry.name, corpus.directory / entry.name, entry.rows)
        for entry in corpus.manifest.shards
        if entry.name.startswith(f"{TEACHER_SPLIT}/")
    ]
    student = model_folder(config.student.path)
    try:
        student_tokenizer = load_tokenizer(student)
    except ValueError as e:
        raise ValueError(f"student: {e}") from e
    check_causal_lm(student, "student.path")  # before the recipe loads it: a one-line refusal
    check_tokenizer_fits(student_tokenizer, student, "student.path")
    teachers, keys = [], {}
    for teacher in config.teachers:
        tokenizer = load_teacher_tokenizer(teacher, teacher.backend or config.extract.backend)
        plan = plan_teacher(config, teacher, corpus, tokenizer)
        keys[teacher.name] = plan.key
        checked = checked_teacher_shards(
            teacher.name,
            plan.directory,
            [s.name for s in shards[: teacher.max_shards]],
            corpus.key,
            repairs,
            tokenizer_fingerprint=plan.header["tokenizer_fingerprint"],
            checksums=checksums,
            # σ-corrected chunk distillation reads each teacher's σ: a cache without it is refused
            # here, with the extract command that fills it, before any model loads.
            space_logprobs=config.distill.objective == "chunk"
            and config.distill.chunk_space_threshold is not None,
            backend=resolve_backend(teacher.backend or config.extract.backend),
        )
        vocab_map = load_or_build_vocab_map(
            tokenizer,
            student_tokenizer,
            cache_dir=Path(config.cache_dir) / "vocab_maps",
            # Exact-token KD maps candidates by their exact string only.
            mode="exact" if config.distill.objective == "exact_token" else config.distill.vocab_map,
        )
        texts_needed = config.distill.aligner == "dtw" or config.distill.objective == "exact_token"
        texts = tuple(build_token_table(tokenizer).texts) if texts_needed else None
        teachers.append(TeacherSource(teacher.name, checked, vocab_map, texts))
        logger.info(
            "teacher %s: %d of %d train shards cached in %s",
            teacher.name,
            len(checked),
            len(shards),
            plan.directory,
        )
    return StreamInputs(corpus.key, shards, teachers, keys)


def export_config_yaml(config: Config, inputs: StreamInputs) -> str:
    """The export's ``config.yaml``: every field of the run's config (with the strategy it ran,
    e.g. from --strategy, the dtype `auto` resolved to, and hub ids of models and datasets pinned
    to the commit they resolved to), headed by the cache keys it read, so that
    ``polyfuse distill --config export/config.yaml`` reproduces the run."""
    import yaml

    sources = [
        replace(s, dataset=resolve_dataset(s.dataset).pinned) if s.dataset is not None else s
        for s in config.corpus.sources
    ]
    from stages.distill.engine import resolve_dtype

    resolved = replace(
        config,
        corpus=replace(config.corpus, sources=sources),
        # `auto` as this machine resolves it, the dtype the recipe trains in (DistillRecipe).
        distill=replace(config.distill, dtype=resolve_dtype(config.distill.dtype)),
        student=replace(config.student, path=resolve_model(config.student.path).pinned),
        teachers=[replace(t, path=resolve_model(t.path).pinned) for t in config.teachers],
    )
    header = [
        "# The resolved config this export was trained with. Reproduce it from the same working",
        "# directory (relative paths) with: polyfuse distill --config <this file>",
        "# (it writes runs_dir/name again: pass name=OTHER to keep this export).",
        *(f"# {name}: {key}" for name, key in inputs.input_keys.items()),
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(asdict(resolved), sort_keys=False, allow_unicode=True)


def build_stream(config: Config, inputs: StreamInputs, *, rank: int, world_size: int) -> Any:
    """This rank's `FusionStream`."""
    from stages.distill.loader import FusionStream

    add_special = config.student.add_special_tokens
    return FusionStream(
        inputs.corpus_shards[: config.distill.train_shards],
        inputs.teachers,
        student_tokenizer=str(model_folder(config.student.path)),
        # None: the tokenizer's own default (BOS where the model was trained with one), as extract does.
        add_special_tokens=True if add_special is None else add_special,
        max_seq_tokens=config.distill.max_seq_tokens,
        micro_batch_size=config.distill.micro_batch_size,
        features=config.distill.gate_features,
        target=config.distill.target,
        gate_objective=config.distill.gate_objective,
        aligner=config.distill.aligner,
        objective=config.distill.objective,
        space_threshold=config.distill.chunk_space_threshold,
        rank=rank,
        world_size=world_size,
        seed=config.seed,
    )


def _rank_zero_first(env: World, build: Callable[[], T]) -> T:
    """Run `build` on rank 0 first (it may write shared caches), then on the others.

    A failure on rank 0 is sent to every rank, so all of them stop with its message instead of
    waiting forever on a barrier rank 0 never reaches.
    """
    if env.world_size == 1:
        return build()
    import torch.distributed as dist

    status: list[str | None] = [None]
    if env.rank == 0:
        try:
            result = build()
        except (ValueError, RuntimeError) as e:
            status[0] = f"{type(e).__name__}: {e}"
            dist.broadcast_object_list(status, src=0)
            raise
        dist.broadcast_object_list(status, src=0)
        return result
    dist.broadcast_object_list(status, src=0)
    if status[0] is not None:
        raise RuntimeError(f"rank 0 stopped: {status[0]}")
    return build()


def summary_rows(run: DistillRun) -> list[dict[str, Any]]:
    """One row per teacher at the run's end (last log window): weight, selection, alignment."""
    m = run.final_metrics
    return [
        {
            "teacher": name,
            "mean_w": round(m.get(f"gate/mean_w/{name}", 0.0), 4),
            "selected_rate": round(m.get(f"gate/selected_rate/{name}", 0.0), 4),
            "present_rate": round(m.get(f"align/present_rate/{name}", 0.0), 4),
            "aligned_rate": round(m.get(f"align/aligned_rate/{name}", 0.0), 4),
            "mapped_mass_rate": round(m.get(f"align/mapped_mass_rate/{name}", 0.0), 4),
        }
        for name in run.teacher_names
    ]


def loss_line(run: DistillRun) -> str:
    """The loss terms of the last log window, one line."""
    m = run.final_metrics
    terms = ", ".join(
        f"{key.removeprefix('loss/')} {value:.4f}" for key, value in m.items() if key.startswith("loss/")
    )
    return f"losses (last window): {terms or 'none logged'}"
