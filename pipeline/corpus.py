"""Orchestration of corpus preparation from a ``Config``."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.output_dirs import check_writable
from stages.prepare.prepare import PreparedCorpus, SourceSpec, prepare_corpus


def prepare_from_config(config: Config) -> PreparedCorpus:
    """Prepare (or find) the corpus the config describes; a cache_dir that cannot take it is
    refused first, naming the folder."""
    check_writable(config.cache_dir, "cache_dir")
    sources = [
        SourceSpec(Path(s.path), s.domain, s.format, s.text_field, s.id_field) for s in config.corpus.sources
    ]
    return prepare_corpus(
        sources,
        Path(config.cache_dir),
        max_chars=config.corpus.max_chars,
        heldout_fraction=config.corpus.heldout_fraction,
        samples_per_shard=config.corpus.samples_per_shard,
        seed=config.corpus.seed,
    )


def corpus_stats_rows(prepared: PreparedCorpus) -> list[dict]:
    """One row per (split, domain): documents, chunks, characters."""
    stats = prepared.manifest.header["stats"]
    return [
        {"split": split, "domain": domain, **values}
        for split, per_domain in stats.items()
        for domain, values in per_domain.items()
    ]
