"""The ``polyfuse`` command line (typer). Heavy libraries are imported inside the commands so
that ``polyfuse --help`` starts fast and works without vLLM or DeepSpeed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import DEBUG, user_errors
from pipeline.methods import ABLATIONS, DEFAULT_METHODS
from stages.distill.settings import STRATEGY_NAMES

app = typer.Typer(
    name="polyfuse",
    help="Fuse the knowledge of several LLMs into one: extract teacher top-k logprobs once, "
    "then distill them into a student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="key=value overrides of config fields, e.g. extract.top_k=10.", show_default=False),
]
DEFAULT_CONFIG = Path("configs/demo.yaml")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    DEBUG["on"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def print_table(rows: list[dict], title: str | None = None) -> None:
    """Print rows as a polars table (all columns, all rows)."""
    import polars as pl

    if title:
        typer.echo(title)
    if not rows:
        typer.echo("(empty)")
        return
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60, tbl_hide_dataframe_shape=True
    ):
        typer.echo(pl.DataFrame(rows))


@app.command()
@user_errors
def prepare(config: ConfigOpt = DEFAULT_CONFIG, overrides: OverridesArg = None) -> None:
    """Cut the corpus files into corpus shards (train and held-out splits) with a manifest."""
    from pipeline.config import load_config
    from pipeline.corpus import corpus_stats_rows, prepare_from_config

    cfg = load_config(config, overrides)
    prepared = prepare_from_config(cfg)
    if prepared.created:
        typer.echo(f"corpus {prepared.key} written to {prepared.directory}")
    else:
        typer.echo(f"corpus {prepared.key} is already prepared in {prepared.directory}: nothing written")
    print_table(corpus_stats_rows(prepared))


@app.command()
@user_errors
def extract(
    config: ConfigOpt = DEFAULT_CONFIG,
    overrides: OverridesArg = None,
    teacher: Annotated[str | None, typer.Option("--teacher", help="Extract only this teacher.")] = None,
    rank: Annotated[
        int | None, typer.Option("--rank", help="This process's rank (default: RANK / SLURM_PROCID / 0).")
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option("--world-size", help="Number of ranks (default: WORLD_SIZE / SLURM_NTASKS / 1)."),
    ] = None,
    finalize: Annotated[
        bool,
        typer.Option("--finalize", help="Extract nothing; rebuild the manifests from the finished shards."),
    ] = False,
) -> None:
    """Run every teacher once over the corpus (preparing it first) into the top-k cache; resumable,
    and a rerun with nothing to do loads no model."""
    from pipeline.config import load_config
    from pipeline.extraction import run_extraction, summary_tables

    cfg = load_config(config, overrides)
    report = run_extraction(cfg, teacher=teacher, rank=rank, world_size=world_size, finalize=finalize)
    typer.echo(report.message)
    if report.world.rank == 0 or report.runs:
        for title, rows in summary_tables(report):
            print_table(rows, title=title)


@app.command()
@user_errors
def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            help="Cache dir, teacher/corpus dir, manifest or shard; or a distill export folder (its "
            "gate against the oracles on the train split)."
        ),
    ],
    decode: Annotated[
        Path | None,
        typer.Option(
            "--decode",
            metavar="OUT",
            help="Write the teacher shard or teacher dir to OUT as plain Parquet (float32 topk_logprobs, "
            "target_logprob) for polars, duckdb or datasets; see docs/reading-shards.md.",
        ),
    ] = None,
) -> None:
    """Summarise a cache: per teacher, per domain and per shard (or one shard's samples); or an
    export's gate diagnostics (agreement with the oracle teacher, mixture bits per byte)."""
    from pipeline.inspection import decode_path, inspect_path

    if decode is not None:
        samples, tokens = decode_path(path, decode)
        typer.echo(f"{samples} samples ({tokens} tokens) written to {decode}")
        return
    for title, table in inspect_path(path):
        print_table(table.to_dicts(), title=title)


@app.command()
@user_errors
def validate(
    path: Annotated[Path, typer.Argument(help="Cache dir, teacher/corpus dir, manifest or shard.")],
    overrides: OverridesArg = None,
    checksums: Annotated[bool, typer.Option(help="Verify sha256 of every shard (reads every byte).")] = True,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The config the cache was built with: the repair commands are written for it and the "
            f"key=value overrides (default: {DEFAULT_CONFIG}).",
        ),
    ] = None,
) -> None:
    """Check checksums, schema, row counts, sample ids, NaN/inf and top-k order; exit 1 on any fault.
    Each fault comes with the command that repairs it."""
    from pipeline.cache_check import Repairs, repairs_note
    from pipeline.inspection import validate_path

    repairs = Repairs(str(config or DEFAULT_CONFIG), tuple(overrides or ()))
    faults = validate_path(path, checksums=checksums, repairs=repairs)
    for fault in faults:
        typer.echo(f"FAULT {fault}", err=True)
    if faults:
        typer.echo(repairs_note(path, repairs, guessed=config is None), err=True)
        typer.echo(f"{len(faults)} fault(s) under {path}", err=True)
        raise SystemExit(1)  # not typer.Exit: that is a RuntimeError, which @user_errors would rewrap
    typer.echo(f"{path}: no faults")


@app.command()
@user_errors
def evaluate(
    models_and_overrides: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="MODEL... [key=value...]",
            help="HF model folders to evaluate, and key=value config overrides (an argument with '=' "
            "is an override), e.g. evaluate.max_samples_per_domain=16.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    target: Annotated[
        Path | None,
        typer.Option(
            "--target",
            help="The target model before fusion: knowledge interference is counted against it "
            "(default: evaluate.target, else student.path when it is among the MODELs).",
        ),
    ] = None,
) -> None:
    """Held-out bits per byte per domain and multiple-choice accuracy of HF model folders, scored by
    lm-evaluation-harness, with knowledge interference against the target; writes
    runs/NAME/eval/{eval.json,eval.md}."""
    from pipeline.config import load_config
    from pipeline.evaluation import evaluate_from_config

    args = models_and_overrides or []
    overrides = [a for a in args if "=" in a]
    models = [Path(a) for a in args if "=" not in a]
    cfg = load_config(config, overrides)
    result = evaluate_from_config(cfg, models, target)
    typer.echo(result.table)
    typer.echo(f"written to {result.directory}/eval.json and eval.md")


@app.command()
@user_errors
def distill(
    config: ConfigOpt = DEFAULT_CONFIG,
    overrides: OverridesArg = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help=f"Fusion strategy: {', '.join(STRATEGY_NAMES)} (default: distill.strategy).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run from its latest checkpoint.")
    ] = False,
) -> None:
    """Train the student on the cached teacher shards (stage two) and export it to runs/NAME/export.
    Several processes: launch through `deepspeed` or `torchrun` (`make distill GPUS=N`)."""
    from pipeline.cache_check import Repairs
    from pipeline.config import load_config
    from pipeline.distillation import distill_from_config, loss_line, summary_rows

    cfg = load_config(config, overrides)
    repairs = Repairs(str(config), tuple(overrides or ()))
    result = distill_from_config(cfg, strategy=strategy, resume=resume, repairs=repairs)
    if result.is_main:
        typer.echo(f"distill {result.strategy}: {result.steps} steps; {loss_line(result)}")
        if result.teacher_names:
            print_table(summary_rows(result), title="teachers (last log window)")
        if result.export_dir is not None:
            typer.echo(f"exported to {result.export_dir}")
        else:
            typer.echo(
                f"stopped at step {result.steps}; continue with --resume from {result.last_checkpoint}"
            )


@app.command()
@user_errors
def experiment(
    config: ConfigOpt = Path("configs/experiment.yaml"),
    overrides: OverridesArg = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help=f"Comma-separated methods (default: {', '.join(DEFAULT_METHODS)}); also any single:NAME "
            f"of the config and the ablations {', '.join(ABLATIONS)} (pipeline/methods.py).",
        ),
    ] = None,
) -> None:
    """Every fusion method on the same cached teacher shards, the target and the teachers evaluated
    alike → runs/NAME/report/{report.md,results.json,*.png}. Resumes: finished methods are kept."""
    import shlex

    from pipeline.config import load_config
    from pipeline.experiment import run_experiment

    cfg = load_config(config, overrides)
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    command = " ".join(
        ["polyfuse experiment --config", shlex.quote(str(config))]
        + ([f"--methods {shlex.quote(methods)}"] if methods else [])
        + [shlex.quote(o) for o in overrides or []]
    )
    result = run_experiment(cfg, chosen, command=command)
    typer.echo(result.markdown)
    typer.echo(f"report written to {result.report_dir}/report.md")


@app.command()
@user_errors
def curves(
    config: ConfigOpt = Path("configs/experiment.yaml"),
    overrides: OverridesArg = None,
    arms: Annotated[
        str | None,
        typer.Option(
            "--arms", help="Comma-separated arms (pipeline/curves.py ARMS; default: every non-ablation arm)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training samples.")] = 4,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Peak learning rate (default: distill.lr).")
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher", help="The teacher of the single-teacher arms (default: the lowest bits per byte)."
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Comma-separated seeds (orders of the samples): every arm trained once per seed, "
            "compared per seed and over seeds (default: the config's seed).",
        ),
    ] = None,
    results: Annotated[
        Path | None, typer.Option("--results", help="Also write curves.{json,md,png} into this folder.")
    ] = None,
) -> None:
    """Learning curves: each arm trained for several epochs on the same samples, every epoch scored
    on the same held-out documents → runs/NAME/report/curves.{md,json,png}. Resumes."""
    import shlex

    from pipeline.config import load_config
    from pipeline.curves import curve_markdown, run_curves

    cfg = load_config(config, overrides)
    chosen = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds else None
    except ValueError:
        raise ValueError(
            f"--seeds {seeds!r}: give whole numbers separated by commas, e.g. --seeds 0,1"
        ) from None
    command = " ".join(
        ["polyfuse curves --config", shlex.quote(str(config)), f"--epochs {epochs}"]
        + ([f"--arms {shlex.quote(arms)}"] if arms else [])
        + ([f"--seeds {shlex.quote(seeds)}"] if seeds else [])
        + ([f"--lr {lr:g}"] if lr is not None else [])
        + ([f"--teacher {shlex.quote(teacher)}"] if teacher else [])
        + [shlex.quote(o) for o in overrides or []]
    )
    out = run_curves(
        cfg,
        chosen,
        epochs=epochs,
        lr=lr,
        teacher=teacher,
        seeds=seed_list,
        results_dir=results,
        command=command,
    )
    typer.echo(curve_markdown(out))


@app.command("config-help")
def config_help() -> None:
    """List every config field with its default and meaning."""
    from pipeline.config import describe_fields

    for key, default, doc in describe_fields():
        typer.echo(f"{key} = {default}\n    {doc}")


if __name__ == "__main__":
    app()
