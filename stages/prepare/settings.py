"""The settings of stage zero (``polyfuse prepare``), the ``corpus:`` section of the YAML config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stages.model_source import HUB_ID
from stages.setting_rules import require


@dataclass
class CorpusSource:
    """One input of the corpus, all of one domain: local files (``path``) or a Hugging Face hub
    dataset (``dataset``), exactly one of the two."""

    path: str | None = None
    """JSONL file, plain-text file or folder of text files, Parquet file, or a folder written by
    ``datasets.Dataset.save_to_disk``. Relative paths are relative to the working directory."""
    domain: str = ""
    """Domain label of every document of this source (e.g. prose, code, math); required."""
    format: Literal["auto", "jsonl", "text", "parquet", "hf_disk"] = "auto"
    """How to read ``path``; ``auto`` decides by suffix (folder with dataset_info.json: hf_disk)."""
    text_field: str = "text"
    """Column / JSON key holding the document text (jsonl, parquet, hf_disk, dataset)."""
    id_field: str | None = "id"
    """Column / JSON key holding a document id; when absent the document's index is used."""
    dataset: str | None = None
    """A hub dataset id ``org/name`` or ``org/name@revision`` (branch, tag or commit) instead of
    ``path``: resolved once to one commit of the dataset repo (HF_HUB_OFFLINE=1: from the local
    hub cache only), which is part of the corpus key; its Parquet, JSONL or text files are read by
    ``datasets`` in streaming mode (a text file is one document)."""
    split: str = "train"
    """The split of ``dataset`` to read, as its file names or its README's configs name them."""
    data_files: str | None = None
    """Glob of the files of ``dataset`` that make up ``split``, relative to the repo root (e.g.
    ``data/train-*.parquet``), where datasets' own inference from the file names does not fit.
    None: that inference."""
    config_name: str | None = None
    """The configuration (subset) of ``dataset`` where its README declares several. None: the
    default one."""

    @property
    def label(self) -> str:
        """What the source is called in messages: its path or its dataset id."""
        return str(self.path if self.path is not None else self.dataset)

    def check(self, where: str) -> None:
        """Rules of one source; ``where`` is its key (``corpus.sources.0``)."""
        require(
            bool(self.domain.strip()), f"{where}.domain", self.domain, "must not be empty", "name the domain"
        )
        require(
            (self.path is None) != (self.dataset is None),
            where,
            {"path": self.path, "dataset": self.dataset},
            "needs exactly one of path (local files) and dataset (a hub id org/name[@revision])",
            "keep one of them",
        )
        if self.dataset is None:
            for name in ("data_files", "config_name"):
                value = getattr(self, name)
                require(
                    value is None, f"{where}.{name}", value, "applies to dataset sources only", "remove it"
                )
            return
        require(
            HUB_ID.match(self.dataset) is not None,
            f"{where}.dataset",
            self.dataset,
            "must be a hub dataset id org/name or org/name@revision",
            "fix the id, or use path for local files",
        )
        require(
            self.format == "auto",
            f"{where}.format",
            self.format,
            "applies to path sources only (datasets reads a hub dataset's files by their suffix)",
            "remove it",
        )


@dataclass
class CorpusSettings:
    """How corpus files become corpus shards (``polyfuse prepare``)."""

    sources: list[CorpusSource] = field(default_factory=list)
    """The corpus sources (local files or hub datasets), each with its domain. Domains must be
    unique across sources."""
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
        for i, src in enumerate(self.sources):
            src.check(f"corpus.sources.{i}")
        domains = [s.domain for s in self.sources]
        dupes = sorted({d for d in domains if domains.count(d) > 1})
        require(
            not dupes,
            "corpus.sources[].domain",
            dupes,
            "must be unique across sources",
            "give each source its own domain or merge the files into one source",
        )
