"""Orchestration of corpus preparation from a ``Config``."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.output_dirs import check_writable
from stages.prepare.prepare import PreparedCorpus, prepare_corpus


def prepare_from_config(config: Config) -> PreparedCorpus:
    """Prepare (or find) the corpus the config describes; a cache_dir that cannot take it is
    refused first, naming the folder."""
    check_writable(config.cache_dir, "cache_dir")
    return prepare_corpus(config.corpus, Path(config.cache_dir))


def corpus_stats_rows(prepared: PreparedCorpus) -> list[dict]:
    """One row per (split, domain): documents, chunks, characters; then one ``dropped`` row per
    domain whose sources held empty (whitespace-only) documents, which preparation drops."""
    stats = prepared.manifest.header["stats"]
    rows = [
        {"split": split, "domain": domain, **values}
        for split, per_domain in stats.items()
        for domain, values in per_domain.items()
    ]
    dropped: dict[str, int] = {}
    for source in prepared.manifest.header["sources"]:
        if source.get("empty_documents"):
            dropped[source["domain"]] = dropped.get(source["domain"], 0) + source["empty_documents"]
    return rows + [
        {
            "split": "dropped (empty)",
            "domain": domain,
            "documents": n,
            "chunks": 0,
            "chars": 0,
            "split_words": 0,
        }
        for domain, n in dropped.items()
    ]
