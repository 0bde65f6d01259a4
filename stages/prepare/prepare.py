"""``polyfuse prepare``: corpus files → corpus shards under ``cache/corpus/<corpus_key>/``.

The directory is built under a temporary name and renamed into place when every shard and the
manifest (marked complete) are written, so an interrupted run leaves no partial corpus, and a
rerun with the same inputs finds the directory and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from data_schemas.atomic import fsync_dir, remove_stale_tmp
from data_schemas.corpus_shard import CORPUS_SCHEMA, CORPUS_SCHEMA_VERSION, SPLITS, shard_name
from data_schemas.keys import content_key
from data_schemas.manifest import Manifest, read_manifest, write_manifest
from data_schemas.parquet_io import write_shard
from stages.prepare.chunking import chunk_document
from stages.prepare.documents import Document, read_documents, resolve_format, source_hash
from stages.prepare.hub_dataset import describe_hub_source, read_hub_documents
from stages.prepare.settings import CorpusSettings, CorpusSource

logger = logging.getLogger(__name__)

CHUNKER_VERSION = 1  # bump when chunking or sample order changes: it changes the corpus key


@dataclass(frozen=True)
class PreparedCorpus:
    key: str
    directory: Path
    manifest: Manifest
    created: bool
    """False when the corpus already existed and nothing was written."""


def describe_sources(sources: list[CorpusSource]) -> list[dict]:
    """What of the sources enters the corpus key: domain, reading settings, content hash (a hub
    dataset's: its resolved commit, hub_dataset.py) and, only where there are any, the number of
    empty (whitespace-only) documents, which preparation drops before drawing the held-out split:
    a source without one keeps the key it had before empty documents were counted, and one with
    them gets a new key, since its split changed."""
    described = []
    for src in sources:
        if src.dataset is not None:
            described.append(describe_hub_source(src))
            continue
        assert src.path is not None, "CorpusSource.check: a path or a dataset"
        fmt = resolve_format(Path(src.path), src.format)
        empty = sum(
            not d.text.strip() for d in read_documents(Path(src.path), fmt, src.text_field, src.id_field)
        )
        described.append(
            {
                "path": str(src.path),
                "domain": src.domain,
                "format": fmt,
                "text_field": src.text_field,
                "id_field": src.id_field,
                "sha256": source_hash(Path(src.path), fmt),
                **({"empty_documents": empty} if empty else {}),
            }
        )
    return described


def compute_corpus_key(described: list[dict], settings: dict) -> str:
    """Hash of the sources' content and the chunking settings (paths and dataset ids as written
    are not part of it; a dataset's repo and commit are)."""
    content = [{k: v for k, v in d.items() if k != "path"} for d in described]
    return content_key({"sources": content, "settings": settings})


def _rank(seed: int, *parts: str) -> str:
    """A stable pseudo-random sort key (independent of Python's hash seed)."""
    return hashlib.sha256("\x00".join((str(seed), *parts)).encode()).hexdigest()


def _heldout_doc_ids(doc_ids: list[str], domain: str, fraction: float, seed: int) -> set[str]:
    """The held-out documents of one domain: a seeded draw of ``fraction`` of them that always
    leaves at least one training document."""
    if fraction <= 0 or len(doc_ids) < 2:
        return set()
    n = min(len(doc_ids) - 1, max(1, round(fraction * len(doc_ids))))
    return set(sorted(doc_ids, key=lambda d: _rank(seed, domain, d))[:n])


def build_rows(
    sources: list[CorpusSource], max_chars: int, heldout_fraction: float, seed: int
) -> dict[str, list[dict]]:
    """Rows of every split: empty (whitespace-only) documents dropped, documents chunked,
    held-out documents set apart, samples ordered by a seeded hash so that every shard mixes
    domains. A document keeps its position in its source as its sample ids' index."""
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for src in sources:
        read = list(enumerate(source_documents(src)))
        docs = [(index, d) for index, d in read if d.text.strip()]
        ids = [d.doc_id for _, d in read]
        dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if dupes:
            raise ValueError(
                f"{src.label}: document ids {dupes[:3]} repeat: make the id field unique "
                "or set corpus.sources[].id_field to null"
            )
        heldout = _heldout_doc_ids([d.doc_id for _, d in docs], src.domain, heldout_fraction, seed)
        for index, doc in docs:
            split = "heldout" if doc.doc_id in heldout else "train"
            for c, chunk in enumerate(chunk_document(doc.text, max_chars)):
                rows[split].append(
                    {
                        "sample_id": f"{src.domain}:{index}:{c}",
                        "domain": src.domain,
                        "doc_id": doc.doc_id,
                        "chunk_index": c,
                        "text": chunk.text,
                        "split_word": chunk.split_word,
                    }
                )
    if not rows["train"]:
        names = ", ".join(s.label for s in sources) or "none"
        raise ValueError(f"the corpus is empty (sources: {names}): point corpus.sources at files with text")
    textless = sorted({s.domain for s in sources} - {r["domain"] for r in rows["train"]})
    if textless:
        paths = ", ".join(s.label for s in sources if s.domain in textless)
        raise ValueError(
            f"corpus domain(s) {textless} hold no text (only empty documents in {paths}): point "
            "corpus.sources at files with text or remove those sources"
        )
    for split in SPLITS:
        rows[split].sort(key=lambda r: _rank(seed, r["sample_id"]))
    return rows


def source_documents(src: CorpusSource) -> Iterator[Document]:
    """The documents of one source: its local files, or its hub dataset's split."""
    if src.dataset is not None:
        return read_hub_documents(src)
    assert src.path is not None, "CorpusSource.check: a path or a dataset"
    return read_documents(Path(src.path), src.format, src.text_field, src.id_field)


def domain_stats(rows: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, int]]]:
    """Documents, chunks and characters per split and domain."""
    stats: dict[str, dict[str, dict[str, int]]] = {}
    for split, split_rows in rows.items():
        per: dict[str, dict] = {}
        for r in split_rows:
            s = per.setdefault(r["domain"], {"documents": set(), "chunks": 0, "chars": 0, "split_words": 0})
            s["documents"].add(r["doc_id"])
            s["chunks"] += 1
            s["chars"] += len(r["text"])
            s["split_words"] += int(r["split_word"])
        stats[split] = {d: {**s, "documents": len(s["documents"])} for d, s in sorted(per.items())}
    return stats


def prepare_corpus(settings: CorpusSettings, cache_root: Path) -> PreparedCorpus:
    """Build (or find) the corpus shards of ``settings.sources``; see the module docstring."""
    sources, max_chars, seed = settings.sources, settings.max_chars, settings.seed
    heldout_fraction, samples_per_shard = settings.heldout_fraction, settings.samples_per_shard
    if not sources:
        raise ValueError("the corpus has no sources: add corpus.sources to the config")
    described = describe_sources(sources)
    keyed = {
        "max_chars": max_chars,
        "heldout_fraction": heldout_fraction,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "chunker_version": CHUNKER_VERSION,
    }
    key = compute_corpus_key(described, keyed)
    directory = Path(cache_root) / "corpus" / key
    if directory.exists():
        manifest = read_manifest(directory)
        if manifest.complete:
            return PreparedCorpus(key, directory, manifest, created=False)
        shutil.rmtree(directory)  # only a complete directory is ever renamed into place

    rows = build_rows(sources, max_chars, heldout_fraction, seed)
    tmp_dir = directory.with_name(f"{key}.{os.getpid()}.tmp")
    remove_stale_tmp(directory.parent, f"{key}.*.tmp")  # killed prepares' folders, never a live one's
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        entries, planned = [], []
        for split in SPLITS:
            split_rows = rows[split]
            for i, start in enumerate(range(0, len(split_rows), samples_per_shard)):
                name = f"{split}/{shard_name(i)}"
                table = pa.Table.from_pylist(split_rows[start : start + samples_per_shard], CORPUS_SCHEMA)
                (tmp_dir / split).mkdir(parents=True, exist_ok=True)
                entry = write_shard(table, tmp_dir / name, CORPUS_SCHEMA)
                entries.append(replace(entry, name=name))
                planned.append(name)
        header = {"sources": described, "settings": keyed, "stats": domain_stats(rows)}
        manifest = Manifest("corpus", key, CORPUS_SCHEMA_VERSION, header, tuple(planned)).with_entries(
            entries
        )
        write_manifest(tmp_dir, manifest)
        try:
            os.replace(tmp_dir, directory)
        except OSError:
            # Another prepare of the same inputs renamed its directory first. The key is a hash
            # of the inputs and the build is deterministic, so its shards are ours: take them.
            winner = read_manifest(directory) if (directory / "manifest.json").is_file() else None
            if winner is None or winner.shards != manifest.shards:
                raise
            logger.info("corpus %s: another process prepared it at the same time; using its files", key)
            return PreparedCorpus(key, directory, winner, created=False)
        fsync_dir(directory.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("corpus %s: %d train and %d held-out samples", key, len(rows["train"]), len(rows["heldout"]))
    return PreparedCorpus(key, directory, manifest, created=True)


def split_shards(corpus_dir: Path, split: str) -> list[Path]:
    """Paths of the shards of one split of a prepared corpus, in order."""
    manifest = read_manifest(corpus_dir)
    return [corpus_dir / s.name for s in manifest.shards if s.name.startswith(f"{split}/")]
