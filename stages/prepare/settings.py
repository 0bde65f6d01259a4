"""The settings of stage zero (``polyfuse prepare``), the ``corpus:`` section of the YAML config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stages.setting_rules import require


@dataclass
class CorpusSource:
    """One input of the corpus: a file (or folder) of documents, all of one domain."""

    path: str
    """JSONL file, plain-text file or folder of text files, Parquet file, or a folder written by
    ``datasets.Dataset.save_to_disk``. Relative paths are relative to the working directory."""
    domain: str
    """Domain label of every document of this source (e.g. prose, code, math)."""
    format: Literal["auto", "jsonl", "text", "parquet", "hf_disk"] = "auto"
    """How to read ``path``; ``auto`` decides by suffix (folder with dataset_info.json: hf_disk)."""
    text_field: str = "text"
    """Column / JSON key holding the document text (jsonl, parquet, hf_disk)."""
    id_field: str | None = "id"
    """Column / JSON key holding a document id; when absent the document's index is used."""


@dataclass
class CorpusSettings:
    """How corpus files become corpus shards (``polyfuse prepare``)."""

    sources: list[CorpusSource] = field(default_factory=list)
    """The corpus files, each with its domain. Domains must be unique across sources."""
    max_chars: int = 2000
    """Longest chunk in characters; documents are cut at paragraph, line or word boundaries."""
    heldout_fraction: float = 0.1
    """Fraction of each domain's documents (never chunks) kept out of training for evaluation."""
    samples_per_shard: int = 256
    """Samples per corpus shard; a teacher shard mirrors one corpus shard (the unit of work)."""
    seed: int = 0
    """Seed of the held-out split."""

    def check(self) -> None:
        require(
            self.max_chars >= 64,
            "corpus.max_chars",
            self.max_chars,
            "must be at least 64",
            "raise corpus.max_chars",
        )
        require(
            0.0 <= self.heldout_fraction < 1.0,
            "corpus.heldout_fraction",
            self.heldout_fraction,
            "must be in [0, 1)",
            "use e.g. 0.1",
        )
        require(
            self.samples_per_shard >= 1,
            "corpus.samples_per_shard",
            self.samples_per_shard,
            "must be at least 1",
            "use e.g. 256",
        )
        domains = [s.domain for s in self.sources]
        dupes = sorted({d for d in domains if domains.count(d) > 1})
        require(
            not dupes,
            "corpus.sources[].domain",
            dupes,
            "must be unique across sources",
            "give each source its own domain or merge the files into one source",
        )
        for i, src in enumerate(self.sources):
            require(
                bool(src.domain.strip()),
                f"corpus.sources.{i}.domain",
                src.domain,
                "must not be empty",
                "name the domain",
            )
