"""Content keys and checksums.

A cache directory is named by the hash of everything that changes its bytes, so two
experiments that need the same bytes find the same directory, and a changed input gets a
new directory instead of overwriting the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

KEY_LENGTH = 16  # hex characters of a content key: 64 bits, collision-free at cache scale
_CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_key(obj: Any) -> str:
    """Short stable key of a JSON-serialisable object."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a whole file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_ends(path: str | os.PathLike[str], span: int = _CHUNK) -> str:
    """Hex sha256 of a file's size, first and last ``span`` bytes: a cheap fingerprint of a
    large weight file (reading 2 MiB instead of gigabytes)."""
    size = Path(path).stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            digest.update(f.read(span))
    return digest.hexdigest()
