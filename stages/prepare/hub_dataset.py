"""Corpus sources named by Hugging Face hub dataset id (``corpus.sources[].dataset``).

The id is resolved once per process to one snapshot of the dataset repo, exactly as a model id
is (stages/model_source.py: ``snapshot_download(..., repo_type="dataset")``; with
``HF_HUB_OFFLINE=1`` from the local hub cache only). The snapshot's commit, not its files' bytes,
stands for the content in the corpus key: a commit never changes, and hashing a large dataset
would cost a read of all of it. Its data files are then read by ``datasets`` from that folder in
streaming mode, row by row, so neither an Arrow copy nor the whole table is ever built; which
files make up which split is datasets' own rule (file names, or the README's ``configs``),
unless ``data_files`` names them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stages.model_source import ResolvedSource, resolve_dataset
from stages.prepare.documents import Document, row_document
from stages.prepare.settings import CorpusSource


def describe_hub_source(src: CorpusSource) -> dict[str, Any]:
    """What of a dataset source enters the corpus key: the repo, its resolved commit and the
    reading settings (``path`` holds the id as configured, which the key leaves out)."""
    assert src.dataset is not None, "a dataset source"
    snapshot = resolve_dataset(src.dataset)
    return {
        "path": src.dataset,
        "domain": src.domain,
        "dataset": snapshot.repo_id,
        "revision": snapshot.revision,
        "config_name": src.config_name,
        "split": src.split,
        "data_files": src.data_files,
        "text_field": src.text_field,
        "id_field": src.id_field,
    }


def read_hub_documents(src: CorpusSource) -> Iterator[Document]:
    """The documents of a dataset source's split, streamed in the order of its files and rows.

    Raises:
        ValueError: an id that cannot be resolved, a config or split the dataset does not have,
            ``data_files`` that match nothing, a row without ``text_field`` (naming the fields it
            has), a file datasets cannot read.
    """
    assert src.dataset is not None, "a dataset source"
    snapshot = resolve_dataset(src.dataset)
    chosen = [f"{name} {value!r}" for name in ("config_name", "data_files") if (value := getattr(src, name))]
    where = f"dataset {src.dataset!r} (commit {snapshot.revision}, {', '.join([*chosen, f'split {src.split!r}'])})"
    rows = iter(_split_stream(snapshot, src, where))
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except (OSError, ValueError) as e:  # pyarrow's and datasets' read errors subclass these
            raise ValueError(
                f"{where}: cannot read row {index} ({type(e).__name__}: {e}): check the dataset's "
                "files, or point corpus.sources[].data_files at the readable ones"
            ) from e
        yield row_document(row, src.text_field, src.id_field, index, f"{where} row {index}")
        index += 1


def _split_stream(snapshot: ResolvedSource, src: CorpusSource, where: str) -> Any:
    """The ``datasets.IterableDataset`` of the source's split in the snapshot folder."""
    import datasets

    data_files = {src.split: src.data_files} if src.data_files else None

    def builder(**options: Any) -> Any:
        try:
            return datasets.load_dataset_builder(
                str(snapshot.folder), name=src.config_name, data_files=data_files, **options
            )
        except (OSError, ValueError) as e:  # no data files, a pattern matching none, an unknown config
            raise ValueError(
                f"{where}: datasets cannot read the snapshot {snapshot.folder} ({type(e).__name__}: {e}): "
                "fix corpus.sources[].config_name or corpus.sources[].data_files"
            ) from e

    found = builder()
    if found.name == "text":  # one document per file, as a local folder of text files
        found = builder(sample_by="document")
    splits = sorted(found.config.data_files or {})
    if splits and src.split not in splits:
        raise ValueError(
            f"{where}: the dataset has no split {src.split!r} (its splits: {', '.join(splits)}): set "
            "corpus.sources[].split to one of them"
            + (" or corpus.sources[].data_files to its files" if not src.data_files else "")
        )
    return found.as_streaming_dataset(split=src.split)
