"""Manifests: the index of a cache directory, written after its shards and marked complete last.

A finished shard first gets a small entry file beside it (``NAME.entry.json``, written after the
shard's rename). The manifest is derived from those entry files, so several ranks finishing
shards of one directory at once never lose an entry: whoever rewrites the manifest last sees them
all. ``complete`` is set only when every planned shard has an entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from data_schemas.atomic import write_json_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
ENTRY_SUFFIX = ".entry.json"


@dataclass(frozen=True)
class ShardEntry:
    """What a finished shard holds, measured after it was renamed into place."""

    name: str
    rows: int
    tokens: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Index of one cache directory (a corpus split or one teacher over one corpus)."""

    kind: str
    """``corpus`` or ``teacher``."""
    key: str
    """Content key of the directory (corpus_key or teacher_key)."""
    schema_version: int
    """Schema version of the shards listed here."""
    header: dict[str, Any]
    """Kind-specific description: sources and chunking, or teacher model, tokenizer, top_k..."""
    planned: tuple[str, ...]
    """Names of every shard the directory will hold once complete."""
    shards: tuple[ShardEntry, ...] = ()
    """Finished shards, in name order."""
    complete: bool = False
    """True once every planned shard is present; written last."""
    manifest_version: int = field(default=MANIFEST_VERSION)

    @property
    def totals(self) -> dict[str, int]:
        return {
            "shards": len(self.shards),
            "rows": sum(s.rows for s in self.shards),
            "tokens": sum(s.tokens for s in self.shards),
            "bytes": sum(s.bytes for s in self.shards),
        }

    def entry(self, name: str) -> ShardEntry | None:
        return next((s for s in self.shards if s.name == name), None)

    def missing(self) -> list[str]:
        done = {s.name for s in self.shards}
        return [name for name in self.planned if name not in done]

    def with_entries(self, entries: list[ShardEntry]) -> Manifest:
        """This manifest with ``entries`` as its shards, complete iff none is missing."""
        shards = tuple(sorted(entries, key=lambda s: s.name))
        done = {s.name for s in shards}
        return replace(self, shards=shards, complete=all(n in done for n in self.planned))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["planned"] = list(self.planned)
        out["totals"] = self.totals
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Manifest:
        obj = dict(obj)
        obj.pop("totals", None)
        obj["planned"] = tuple(obj["planned"])
        obj["shards"] = tuple(ShardEntry(**s) for s in obj.get("shards", ()))
        return cls(**obj)


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read ``directory/manifest.json``; ``RuntimeError`` if it is missing or unreadable."""
    path = Path(directory) / MANIFEST_NAME
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest.from_json(obj)
    except FileNotFoundError as e:
        raise RuntimeError(f"{path} does not exist: the directory was never written") from e
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as e:
        raise RuntimeError(
            f"{path} is corrupt ({type(e).__name__}: {e}): `polyfuse validate {path.parent}` prints "
            "the command that rebuilds it"
        ) from e
    if manifest.manifest_version != MANIFEST_VERSION:
        raise RuntimeError(
            f"{path} has manifest version {manifest.manifest_version}, this polyfuse reads "
            f"{MANIFEST_VERSION}: delete the directory and rerun"
        )
    return manifest


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> None:
    write_json_atomic(Path(directory) / MANIFEST_NAME, manifest.to_json())


def write_entry(directory: str | os.PathLike[str], entry: ShardEntry) -> None:
    """Record a finished shard; call only after the shard itself was renamed into place."""
    write_json_atomic(Path(directory) / f"{entry.name}{ENTRY_SUFFIX}", asdict(entry))


def read_entry(path: Path) -> ShardEntry:
    """One entry file; ``RuntimeError`` naming it and the fix if it is corrupt."""
    try:
        entry = ShardEntry(**json.loads(path.read_text(encoding="utf-8")))
        if entry.name != path.name.removesuffix(ENTRY_SUFFIX):
            raise ValueError(f"it describes {entry.name!r}")
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        shard = path.with_name(path.name.removesuffix(ENTRY_SUFFIX))
        raise RuntimeError(
            f"{path} is corrupt ({type(e).__name__}: {e}): delete it and its shard "
            f"(rm -f {path} {shard}) and extract the shard again"
        ) from e
    return entry


def read_entries(directory: str | os.PathLike[str]) -> list[ShardEntry]:
    """Entries of every finished shard in ``directory`` whose shard file is still present."""
    entries = []
    for path in sorted(Path(directory).glob(f"*{ENTRY_SUFFIX}")):
        entry = read_entry(path)
        if (Path(directory) / entry.name).exists():
            entries.append(entry)
    return entries


def refresh_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Rebuild ``manifest`` from the entry files on disk, write it, and return it."""
    updated = manifest.with_entries(read_entries(directory))
    write_manifest(directory, updated)
    return updated
