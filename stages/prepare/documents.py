"""Reading corpus sources into documents, with one-line errors for every bad input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_schemas.keys import sha256_file

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")
_FOLDER_SUFFIXES = {"text": TEXT_SUFFIXES, "jsonl": JSONL_SUFFIXES, "parquet": (".parquet",)}


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


def resolve_format(path: Path, fmt: str) -> str:
    """The concrete format of a source (``auto`` decided by suffix or folder content)."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        if (path / "dataset_info.json").exists():
            return "hf_disk"
        # A folder of text files stays `text`; one of JSONL (or Parquet) files only is read as such.
        for fmt, suffixes in (("text", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", (".parquet",))):
            if any(p.is_file() and p.suffix in suffixes for p in path.rglob("*")):
                return fmt
        return "text"
    if path.suffix in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    return "text"


def source_files(path: Path, fmt: str) -> list[Path]:
    """The files whose bytes make up a source (for its content hash)."""
    if not path.exists():
        raise ValueError(f"corpus source {path} does not exist: fix corpus.sources[].path")
    if path.is_file():
        return [path]
    suffixes = _FOLDER_SUFFIXES.get(fmt)
    files = sorted(p for p in path.rglob("*") if p.is_file() and (suffixes is None or p.suffix in suffixes))
    if not files:
        wanted = f" ({', '.join(suffixes)})" if suffixes else ""
        raise ValueError(
            f"corpus source {path} holds no {fmt} files{wanted}: fix corpus.sources[].path or set "
            "corpus.sources[].format"
        )
    return files


def source_hash(path: Path, fmt: str) -> str:
    """sha256 over the relative names and contents of a source's files."""
    digest = hashlib.sha256()
    root = path if path.is_dir() else path.parent
    for file in source_files(path, fmt):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{where}:{line} is not UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}): "
            "convert it with e.g. `iconv -f latin1 -t utf-8`"
        ) from e


def _read_jsonl(path: Path, text_field: str, id_field: str | None) -> Iterator[Document]:
    text = _decode(path.read_bytes(), str(path))
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno} is not valid JSON ({e.msg}): fix the line") from e
        yield row_document(row, text_field, id_field, lineno - 1, f"{path}:{lineno}")


def row_document(row: object, text_field: str, id_field: str | None, index: int, where: str) -> Document:
    """The document of one record (a JSON line, a table row); ``index`` is its id when the record
    has no ``id_field``. ``ValueError`` naming ``where`` and the fix for a record without text."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a {type(row).__name__}, not a record with a text field: fix the source")
    if text_field not in row:
        raise ValueError(
            f"{where} has no text field {text_field!r} (its fields: {', '.join(map(str, row)) or 'none'}): "
            "set corpus.sources[].text_field to the one that holds the text"
        )
    text = row[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON escape such as "\ud800" without its pair
        raise ValueError(
            f"{where}: field {text_field!r} holds a lone surrogate {text[e.start]!r} at character {e.start}, "
            "which is not text: fix the \\u escape (a surrogate needs its pair)"
        ) from e
    doc_id = row.get(id_field) if id_field else None
    return Document(str(doc_id) if doc_id is not None else str(index), text)


def _read_table_rows(
    rows: Iterator[dict], path: Path, text_field: str, id_field: str | None
) -> Iterator[Document]:
    for index, row in enumerate(rows):
        yield row_document(row, text_field, id_field, index, f"{path} row {index}")


def read_documents(path: Path, fmt: str, text_field: str, id_field: str | None) -> Iterator[Document]:
    """Documents of one source, in a stable order."""
    fmt = resolve_format(path, fmt)
    files = source_files(path, fmt)
    if fmt == "jsonl":
        for file in files:
            yield from _read_jsonl(file, text_field, id_field)
    elif fmt == "text":
        root = path if path.is_dir() else path.parent
        for file in files:
            yield Document(str(file.relative_to(root)), _decode(file.read_bytes(), str(file)))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for file in files:
            try:
                table = pq.read_table(file)
            except Exception as e:  # pyarrow raises several types for a bad file
                raise ValueError(f"{file} is not a readable Parquet file ({e}): fix the path") from e
            yield from _read_table_rows(iter(table.to_pylist()), file, text_field, id_field)
    elif fmt == "hf_disk":
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises FileNotFoundError or its own errors
            raise ValueError(f"{path} is not a dataset saved with save_to_disk ({e})") from e
        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(f"{path} holds several splits: point corpus.sources[].path at one")
        yield from _read_table_rows(iter(dataset), path, text_field, id_field)
    else:
        raise ValueError(f"unknown corpus format {fmt!r}: use auto, jsonl, text, parquet or hf_disk")
