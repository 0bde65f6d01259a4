"""The distill training loop (docs/design.md §8): setup → train → save_checkpoint → export → cleanup.

One readable loop over DeepSpeed; the maths is in model.py / fusion.py / losses.py, the data in
loader.py, DeepSpeed in engine.py. A run lives in one folder:

    <run_dir>/checkpoints/step-000050/   engine.save_checkpoint, with client_state = step, loader
                                         state, every rank's RNG states (torch, numpy, python and
                                         the `random_gate` generator)
    <run_dir>/logs/metrics.jsonl, logs/tensorboard/
    <run_dir>/export/                    export.py

`resume=True` loads the latest complete checkpoint and continues exactly where it stopped: on
fp32 CPU, a run killed after step s and resumed ends with the same losses and weights as one that
never stopped (tests/stages/distill/test_recipe.py). Before the student loads, a resume whose run
differs from the checkpoint's resume record is refused (run_state.py, docs/reliability.md).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from data_schemas.atomic import atomic_open
from stages.distill import engine as ds
from stages.distill.batch import FusionBatch
from stages.distill.export import summarize_run, write_export
from stages.distill.loader import feature_count
from stages.distill.loss_terms import term_weights
from stages.distill.metrics import MetricsLogger, SampleLog, StepStats
from stages.distill.model import FusionModule, FusionOutput
from stages.distill.run_state import (
    LATEST,
    checkpoint_tag,
    checkpoint_tags,
    complete_checkpoint_tags,
    disk_full,
    disk_full_message,
    gather_from_ranks,
    incomplete_checkpoint_tags,
    latest_tag,
    read_resume_record,
    resume_changes,
    resume_record,
    rng_state,
    seed_everything,
    set_rng_state,
    write_resume_record,
)
from stages.distill.settings import DistillSettings, canonical_strategy
from stages.distill.strategies import Strategy
from stages.world import World

logger = logging.getLogger(__name__)


class BatchStream(Protocol):
    """What the recipe needs of the loader (`loader.FusionStream`): an iterable dataset of
    `FusionBatch`es whose position is one integer."""

    teacher_names: tuple[str, ...]

    def __iter__(self) -> Iterator[FusionBatch]: ...

    def state_dict(self, batches_consumed: int) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


ADAM_EPS = 1e-8
"""AdamW ε of both parameter groups (not a setting: no run has needed another)."""


@dataclass(frozen=True)
class RecipeRun:
    """The recipe's input besides its ``distill`` settings: where the run lives, what it starts
    from and how it is driven (pipeline/distillation.py builds it from the config's files and the
    command). What comes out is a `DistillResult`."""

    run_dir: Path
    student_path: Path
    strategy: Strategy
    """``DistillSettings.strategy``, parsed once against the run's teachers."""
    world: World
    """This process in the job (`engine.prepare_distributed_env`, which set what DeepSpeed reads)."""
    seed: int
    """The config's global seed."""
    resume: bool = False
    stop_after_steps: int | None = None
    """Checkpoint and stop (no export) once this many steps are done: a time-boxed run, and how
    the tests kill a run at a known step."""
    progress: bool = True
    tensorboard: bool = True
    """False turns every tracker of ``distill.report_to`` off (metrics.jsonl stays)."""
    export_files: dict[str, str] | None = None
    """Further text files of the export, name → content: the resolved `config.yaml` the run was
    started from (pipeline/distillation.py), so that every export says how to reproduce it."""
    input_keys: dict[str, str] | None = None
    """The content keys of the caches the run reads (``corpus_key``, ``teacher_key NAME``): a
    resume over other data (a teacher's path changed under the same name, another draws cache)
    is refused."""


@dataclass(frozen=True)
class DistillResult:
    """What `run_distill` returns on this rank: how far the run got and where its outputs are
    (pipeline/distillation.py adds the run's names to it for the command's report, `DistillRun`)."""

    steps: int
    export_dir: Path | None
    last_checkpoint: Path | None
    final_metrics: dict[str, Any]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step, the samples and the last checkpoint."""


class DistillRecipe:
    def __init__(self, settings: DistillSettings, run: RecipeRun, stream: BatchStream) -> None:
        # `auto` is resolved here, once per run: the resume record and the log read self.cfg.
        self.cfg = settings = replace(settings, dtype=ds.resolve_dtype(settings.dtype))
        self.run = run
        self.stream = stream
        self.teacher_names: tuple[str, ...] = tuple(stream.teacher_names)
        self.strategy = run.strategy
        assert self.strategy.name == settings.strategy, "RecipeRun.strategy is settings.strategy parsed"
        assert self.strategy.teacher_index is None or (
            self.teacher_names[self.strategy.teacher_index] == self.strategy.teacher
        ), "single:NAME was parsed against the stream's teachers"
        self.terms = term_weights(settings, self.strategy)
        """The loss terms this run computes, name → weight (loss_terms.py)."""
        self.checkpoint_dir = run.run_dir / "checkpoints"
        self.step = 0
        self.batches_consumed = 0
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        from transformers import AutoModelForCausalLM

        cfg, run = self.cfg, self.run
        self.world = run.world
        self._drop_incomplete_checkpoints()
        if run.resume:
            self._check_resumable()  # before the student loads: a changed run is refused in seconds
        elif complete_checkpoint_tags(self.checkpoint_dir):  # every rank checks: none may go on alone
            raise ValueError(
                f"{self.checkpoint_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another run name (name=...)"
            )
        seed_everything(run.seed)  # same on every rank: the gate's init must agree
        dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        # Never the folder's own code, and never a question on stdin (transformers asks when unset).
        student = AutoModelForCausalLM.from_pretrained(
            str(run.student_path), dtype=dtype, local_files_only=True, trust_remote_code=False
        )
        if cfg.dtype == ds.MIXED_DTYPE:
            ds.autocast_student(student, "cuda" if torch.cuda.is_available() else "cpu")
        module = FusionModule(
            student,
            self.strategy,
            len(self.teacher_names),
            cfg,
            num_features=feature_count(cfg.gate_features),
            space_mask=student_space_mask(run.student_path, student) if "chunk" in self.terms else None,
        )
        optimizer = ds.build_optimizer(
            module.student_parameters(),
            module.gate_parameters(),
            lr=cfg.lr,
            gate_lr=cfg.gate_lr,
            weight_decay=cfg.weight_decay,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=ADAM_EPS,
        )
        scheduler = ds.cosine_with_warmup(optimizer, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)
        if cfg.deepspeed_config is not None:
            ds_config = ds.read_deepspeed_config(
                Path(cfg.deepspeed_config),
                micro_batch_size=cfg.micro_batch_size,
                grad_accum_steps=cfg.grad_accum_steps,
            )
        else:
            ds_config = ds.build_deepspeed_config(
                micro_batch_size=cfg.micro_batch_size,
                grad_accum_steps=cfg.grad_accum_steps,
                zero_stage=cfg.zero_stage,
                dtype=cfg.dtype,
                grad_clip=cfg.grad_clip,
            )
        self.engine = ds.initialize_engine(module, optimizer, scheduler, ds_config)
        # The `random_gate` strategy's fresh gate per step draws from here, never from the global RNG.
        self.random_gate_rng = torch.Generator().manual_seed(run.seed + 1_000_003 * (self.world.rank + 1))
        if run.resume:
            self._load_checkpoint()
        self.metrics = MetricsLogger(
            run.run_dir / "logs",
            enabled=self.world.is_main,
            total_steps=cfg.max_steps,
            start_step=self.step,
            progress=run.progress,
            report_to=cfg.report_to if run.tensorboard else ["none"],
            run_config=(run.export_files or {}).get("config.yaml"),
            run_name=run.run_dir.name,
        )
        self.stats = StepStats(self.teacher_names, self.terms)
        self.sample_log = SampleLog(run.run_dir / "logs", self.world.rank, start_step=self.step)
        self.loader = DataLoader(
            self.stream,  # type: ignore[arg-type]  (an IterableDataset)
            batch_size=None,  # the stream yields collated micro-batches
            num_workers=cfg.loader_workers,
            persistent_workers=False,
            prefetch_factor=4 if cfg.loader_workers else None,
        )

    # ----------------------------------------------------------------------------------- train
    def train(self) -> None:
        cfg = self.cfg
        stop = min(cfg.max_steps, self.run.stop_after_steps or cfg.max_steps)
        batches = iter(self.loader)
        window_started, window_tokens = time.perf_counter(), 0
        while self.step < stop:
            lrs = self._learning_rates()  # the LRs this step uses (the scheduler moves them after it)
            self.engine.module.start_step()
            for _ in range(cfg.grad_accum_steps):
                batch: FusionBatch = next(batches)
                output: FusionOutput = self.engine(
                    batch.to(self.engine.device), generator=self.random_gate_rng
                )
                self._check_finite(output, batch)
                self.engine.backward(output.losses.total)
                self.engine.step()
                self.batches_consumed += 1
                self.stats.add(batch, output)
                self.sample_log.add(self.step + 1, batch.sample_ids)
                window_tokens += batch.num_tokens
            self.step += 1
            assert self.engine.global_steps == self.step, (
                "one optimizer step per grad_accum_steps micro-batches"
            )
            elapsed = time.perf_counter() - window_started
            self.metrics.progress(
                self.step,
                output.losses.detached(),
                window_tokens * self.world.world_size / max(elapsed, 1e-9),
            )
            window_started, window_tokens = time.perf_counter(), 0
            checkpoint_now = self.step % cfg.checkpoint_every == 0 or self.step == stop
            # A log window always closes at a checkpoint, so a resumed run's log has no gap.
            if self.step % cfg.log_every == 0 or checkpoint_now:
                self.last_metrics = self.stats.summary(lrs, self.world.world_size, self.engine.device)
                self.metrics.log(self.step, self.last_metrics)
            if checkpoint_now:
                self.save_checkpoint()
            if cfg.export_every and self.step % cfg.export_every == 0:
                self.export(self.run.run_dir / "exports" / checkpoint_tag(self.step))

    def _learning_rates(self) -> dict[str, float]:
        return {
            group.get("name", str(i)): group["lr"]
            for i, group in enumerate(self.engine.optimizer.param_groups)
        }

    def _check_finite(self, output: FusionOutput, batch: FusionBatch) -> None:
        bad = (~torch.isfinite(output.losses.total.detach())).to(torch.float32).reshape(1)
        if self.world.world_size > 1:
            torch.distributed.all_reduce(bad)  # every rank stops together, none hangs in backward
        if bad.item() == 0:
            return
        terms = output.losses.detached()
        where = (
            f"the last good checkpoint is {self.last_checkpoint}; resume from it with `polyfuse distill "
            "--resume` after lowering distill.lr"
            if self.last_checkpoint
            else "no checkpoint was written yet; lower distill.lr and start again"
        )
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {self.step + 1} (micro-batch {self.batches_consumed + 1}, "
            f"rank {self.world.rank}): {terms} on samples {list(batch.sample_ids)}; {where}"
        )

    # ------------------------------------------------------------------------ save_checkpoint
    def save_checkpoint(self) -> Path:
        tag = checkpoint_tag(self.step)
        client_state = {
            "polyfuse_step": self.step,
            "polyfuse_loader": self.stream.state_dict(self.batches_consumed),
            "polyfuse_rng": gather_from_ranks(rng_state(self.random_gate_rng), self.world.world_size),
            "polyfuse_strategy": self.strategy.name,
            "polyfuse_teachers": list(self.teacher_names),
            "polyfuse_metrics": self.last_metrics,
        }
        # DeepSpeed writes `latest` in place, where a kill can leave it empty; it returns after a
        # barrier (every rank's files written), and rank 0 then points `latest` at the tag atomically:
        # a folder `latest` does not name is incomplete (run_state.py).
        try:
            self.engine.save_checkpoint(
                str(self.checkpoint_dir), tag=tag, client_state=client_state, save_latest=False
            )
            if self.world.is_main:
                write_resume_record(self.checkpoint_dir / tag, self.resume_settings())
        except (OSError, RuntimeError) as e:
            if not disk_full(e):
                raise
            raise RuntimeError(disk_full_message(self.checkpoint_dir / tag)) from e
        self.last_checkpoint = self.checkpoint_dir / tag
        if self.world.is_main:
            with atomic_open(self.checkpoint_dir / LATEST) as f:
                f.write(tag)
            for old in checkpoint_tags(self.checkpoint_dir)[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(self.checkpoint_dir / old, ignore_errors=True)
        logger.debug("checkpoint %s written", self.last_checkpoint)
        return self.last_checkpoint

    def _drop_incomplete_checkpoints(self) -> None:
        """A checkpoint cut short (killed, or the disk filled) is never resumed from: say so and
        remove it (rank 0; the others already ignore it, since `latest` does not name it)."""
        incomplete = incomplete_checkpoint_tags(self.checkpoint_dir)
        if not incomplete or not self.world.is_main:
            return
        logger.warning(
            "%s: %s was cut short before it was complete (a kill or a full disk): removed, not resumed from",
            self.checkpoint_dir,
            ", ".join(incomplete),
        )
        for tag in incomplete:
            shutil.rmtree(self.checkpoint_dir / tag, ignore_errors=True)

    def _check_resumable(self) -> None:
        """Refuse, before any model loads, a resume with nothing to resume from or whose run
        differs from its checkpoint's in anything but `RESUMABLE_SETTINGS` (each change named)."""
        tag = latest_tag(self.checkpoint_dir)
        if tag is None:
            raise ValueError(
                f"--resume: {self.checkpoint_dir} has no checkpoint to resume from: run without --resume"
            )
        saved = read_resume_record(self.checkpoint_dir / tag)
        if saved is not None:  # None: written before records existed; `_load_checkpoint` checks it
            self._refuse_changes(saved)

    def _refuse_changes(self, saved: dict[str, Any]) -> None:
        if "strategy" in saved:  # a run started under a former name (`authors`) resumes as itself
            saved = {**saved, "strategy": canonical_strategy(saved["strategy"])}
        changed = resume_changes(saved, self.resume_settings())
        if changed:
            raise ValueError(
                f"--resume: this run changes {', '.join(changed)} against its checkpoint: resume with the "
                "settings it was started with, or start a new run (name=...) with the new ones"
            )

    def _load_checkpoint(self) -> None:
        path, state = self.engine.load_checkpoint(str(self.checkpoint_dir))
        if path is None or not state:
            raise RuntimeError(
                f"cannot load the latest checkpoint of {self.checkpoint_dir}: delete it and rerun"
            )
        loaded = Path(path).parent if Path(path).is_file() else Path(path)
        if read_resume_record(loaded) is None:
            # A checkpoint of an older version: its client state holds part of the record.
            legacy = {
                **state.get("polyfuse_settings", {}),
                "strategy": state["polyfuse_strategy"],
                "teachers": state["polyfuse_teachers"],
            }
            now = self.resume_settings()
            self._refuse_changes({k: v for k, v in legacy.items() if k in now})
        self.step = state["polyfuse_step"]
        self.stream.load_state_dict(state["polyfuse_loader"])
        self.batches_consumed = state["polyfuse_loader"]["batches"]
        rngs = state["polyfuse_rng"]
        if len(rngs) != self.world.world_size:
            raise ValueError(
                f"--resume: the checkpoint was written by {len(rngs)} ranks, this run has "
                f"{self.world.world_size}: resume with the same number of processes"
            )
        set_rng_state(rngs[self.world.rank], self.random_gate_rng)
        self.last_metrics = state.get("polyfuse_metrics", {})
        self.last_checkpoint = loaded
        logger.info("resumed from %s at step %d", path, self.step)

    def resume_settings(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint (`run_state.resume_record`): a resume
        that changed it would silently train a run no config describes."""
        return resume_record(
            self.cfg,
            teachers=self.teacher_names,
            input_keys=self.run.input_keys or {},
            seed=self.run.seed,
            student=str(self.run.student_path),
            world_size=self.run.world.world_size,
        )

    # ----------------------------------------------------------------------------------- export
    def export(self, export_dir: Path | None = None) -> Path:
        """Gather the weights (every rank) and write an export folder (rank 0): the run's
        `export/` by default; `exports/step-N/` for the intermediate ones of `export_every`."""
        module: FusionModule = self.engine.module
        student_state = ds.gathered_state_dict(module.student)
        gate_state = ds.gathered_state_dict(module.gate) if module.gate is not None else None
        export_dir = self.run.run_dir / "export" if export_dir is None else export_dir
        if self.world.is_main:
            info = {
                "strategy": self.strategy.name,
                "teachers": list(self.teacher_names),
                "features": self.cfg.gate_features,
                "tau": self.cfg.tau,
            }
            stats = summarize_run(
                self.metrics.path,
                self.teacher_names,
                {**info, "steps": self.step, "student": str(self.run.student_path)},
            )
            write_export(
                export_dir,
                module.student,
                student_state,
                self.run.student_path,
                gate_state,
                info,
                stats,
                extra_files=self.run.export_files,
            )
        if self.world.world_size > 1:
            torch.distributed.barrier()
        return export_dir

    # ---------------------------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        for log in (getattr(self, "metrics", None), getattr(self, "sample_log", None)):
            if log is not None:
                log.close()
        self.loader = None  # shuts the worker processes down
        engine = getattr(self, "engine", None)
        if engine is not None:
            # Unhooks the ZeRO optimizer: its backward hooks otherwise keep the engine, the student
            # and the optimizer states (≈ 2 GB for a 135M student) alive for the whole process.
            engine.destroy()


def student_space_mask(student_path: Path, student: torch.nn.Module) -> torch.Tensor:
    """`[V]` bool: the student's ids that start a new word (token_text.space_mask), V its logits' width."""
    from stages.align.token_text import build_token_table, space_mask
    from stages.tokenization import load_tokenizer

    width = student.get_output_embeddings().weight.shape[0]
    return torch.from_numpy(space_mask(build_token_table(load_tokenizer(student_path)), width))


def run_distill(settings: DistillSettings, run: RecipeRun, stream: BatchStream) -> DistillResult:
    """setup → train → export → cleanup; export is skipped when `stop_after_steps` stopped early."""
    recipe = DistillRecipe(settings, run, stream)
    try:
        recipe.setup()
        recipe.train()
        finished = recipe.step >= settings.max_steps
        export_dir = recipe.export() if finished else None
    finally:
        recipe.cleanup()
    return DistillResult(recipe.step, export_dir, recipe.last_checkpoint, recipe.last_metrics)
