"""Completion markers of material folders: a folder is finished when its marker names its source.

A folder is built under ``<name>.tmp``, its marker written into it last, and then renamed to its
final name, so a folder exists under that name only when complete (datatrove's rule).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER = ".complete"


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of a material folder, or None if the folder is not complete."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(folder: Path, source_sha256: str) -> bool:
    """True when ``folder`` was finished from exactly this source."""
    marker = read_marker(folder)
    return marker is not None and marker.get("source_sha256") == source_sha256


def publish_folder(tmp: Path, folder: Path, marker: dict[str, Any]) -> None:
    """Write the marker into ``tmp`` last, then rename ``tmp`` to ``folder``.

    A folder therefore exists under its final name only when complete. An earlier incomplete
    or outdated folder of the same name is our own output and is replaced.
    """
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        logger.info("replacing outdated %s", folder)
        shutil.rmtree(folder)
    tmp.rename(folder)
