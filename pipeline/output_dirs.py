"""The folders a command writes to: checked writable before anything loads, and a run folder
locked against a second ``distill`` on it.

A read-only or full ``cache_dir``/``runs_dir`` must be one line naming the folder and the fix,
found in milliseconds, not an ``OSError`` after a model has loaded for minutes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

MIN_FREE_BYTES = 64 << 20
"""Less free space than this is refused up front (a teacher shard or a checkpoint needs more)."""
LOCK_NAME = ".polyfuse.lock"


def check_writable(path: str | os.PathLike[str], key: str, *, min_free: int = MIN_FREE_BYTES) -> Path:
    """Create ``path`` if needed and prove it writable with a probe file; ``ValueError`` naming
    the config ``key`` and the fix otherwise (read-only, not a folder, or under ``min_free``)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".polyfuse-write-probe.{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        cause = (
            "is not a folder" if isinstance(e, (FileExistsError, NotADirectoryError)) else "is not writable"
        )
        raise ValueError(
            f"{key} {folder} {cause} ({e.strerror or e}): fix its permissions or set {key}=PATH to a "
            "writable folder"
        ) from e
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise ValueError(
            f"{key} {folder} has {free >> 20} MiB free, at least {min_free >> 20} MiB are needed: free "
            f"space on its disk or set {key}=PATH to a folder on another disk"
        )
    return folder


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the body; ``ValueError`` if another process holds
    it. The kernel drops the lock when its holder dies, so a killed run never blocks the next."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ValueError(
                f"{run_dir} is in use by another polyfuse distill: wait for it to finish, or choose "
                "another run name (name=...)"
            ) from e
        yield
    finally:
        os.close(fd)  # closing releases the lock
