"""The ``polyfuse`` command line (typer). Heavy libraries are imported inside the commands so
that ``polyfuse --help`` starts fast and works without vLLM or DeepSpeed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import DEBUG, user_errors

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


@app.command("config-help")
def config_help() -> None:
    """List every config field with its default and meaning."""
    from pipeline.config import describe_fields

    for key, default, doc in describe_fields():
        typer.echo(f"{key} = {default}\n    {doc}")


if __name__ == "__main__":
    app()
