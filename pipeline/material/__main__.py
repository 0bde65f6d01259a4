"""``python -m pipeline.material STEP [--root DIR]``: set up the demo material.

Steps: ``tokenizers`` (what the tests need: seconds once, ~1 s after), ``models`` (fp32 HF
folders of the three demo models, minutes), ``corpus`` (the demo text under ``data/demo/``),
``all`` (the three in that order). Every step is idempotent and skips finished work. Bad input
or a missing source exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline.material.model_sources import MODEL_SOURCES, MaterialLayout, model_source

logger = logging.getLogger("pipeline.material")

STEPS = ("tokenizers", "models", "corpus", "all")


def run_tokenizers(layout: MaterialLayout, names: list[str]) -> None:
    from pipeline.material.tokenizer_export import export_tokenizers

    sources = tuple(model_source(n) for n in names)
    built = export_tokenizers(sources, layout)
    for source in sources:
        folder = layout.tokenizers / source.name
        state = "built" if source.name in built else "up to date"
        logger.info("tokenizer %-28s %-10s %6.1f MB  %s", source.name, state, _mb(folder), folder)


def run_models(layout: MaterialLayout, names: list[str]) -> None:
    from pipeline.material.gguf_convert import convert_model, folder_bytes

    for name in names:  # one at a time: memory is bounded by the largest model
        done = convert_model(model_source(name), layout)
        folder = layout.models / name
        took = f"{done.seconds:6.0f} s" if done else "up to date"
        logger.info("model     %-28s %-10s %6.2f GB  %s", name, took, folder_bytes(folder) / 1e9, folder)


def run_corpus(layout: MaterialLayout) -> None:
    from pipeline.material.corpus_build import build_corpus

    summary = build_corpus(layout.demo_data)
    for domain, stats in sorted(summary["domains"].items()):
        logger.info("corpus    %-10s %5d docs %9d chars", domain, stats["documents"], stats["characters"])


def _mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6 if folder.exists() else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.material", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=STEPS, help="what to set up")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument(
        "--model",
        action="append",
        choices=[s.name for s in MODEL_SOURCES],
        help="limit tokenizers/models to this model (repeatable; default: all three)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # These libraries log warnings per file that say nothing about this set-up.
    for noisy in ("transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    layout = MaterialLayout(args.root.resolve())
    names = args.model or [s.name for s in MODEL_SOURCES]
    start = time.perf_counter()
    try:
        if args.step in ("tokenizers", "all"):
            run_tokenizers(layout, names)
        if args.step in ("corpus", "all"):
            run_corpus(layout)
        if args.step in ("models", "all"):
            run_models(layout, names)
    except (ValueError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"material {args.step}: {e}", file=sys.stderr)
        return 2
    logger.info("material %s done in %.1f s", args.step, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
