"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A reader therefore sees either the old file or the complete new one, never a half-written
file, and a writer killed mid-way leaves only a ``*.tmp`` file that the next run replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def tmp_path_for(path: Path) -> Path:
    """The temporary sibling that ``path`` is written to before the rename.

    The process id keeps two ranks that race on the same target from sharing a tmp file.
    """
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so that a rename inside it survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    If the body raises, the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(target)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the body succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        encoding = "utf-8" if mode == "w" else None
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def writer_alive(tmp: Path) -> bool:
    """Whether the process named by ``tmp`` (``NAME.<pid>.tmp``, see ``tmp_path_for``) still runs.

    A name without a pid, or a pid that is gone, belongs to a killed writer. A pid reused by an
    unrelated process keeps a leftover for one more run: that costs disk, never data, whereas
    deleting a live writer's file makes its rename fail.
    """
    pid = tmp.name.removesuffix(".tmp").rsplit(".", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def stale_tmp_files(directory: str | os.PathLike[str], pattern: str = "*.tmp") -> list[Path]:
    """``pattern`` matches in ``directory`` whose writer is gone (files or folders), sorted."""
    return [p for p in sorted(Path(directory).glob(pattern)) if not writer_alive(p)]


def remove_stale_tmp(directory: str | os.PathLike[str], pattern: str = "*.tmp") -> list[Path]:
    """Delete the ``*.tmp`` leftovers of killed writers in ``directory`` (never a live writer's);
    return what was removed."""
    removed = []
    for tmp in stale_tmp_files(directory, pattern):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
