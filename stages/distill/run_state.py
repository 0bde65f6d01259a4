"""What a checkpoint must hold beyond DeepSpeed's own state for a resume to be exact: every
random generator the loop draws from, per rank; what the run was (its resume record); and which
checkpoint folders are complete.

DeepSpeed writes `client_state` into the model-states file of data-parallel rank 0 only, so
anything that differs between ranks (the RNG streams) is gathered into a per-rank list first.

A checkpoint is complete once `latest` names it (or a later one): the recipe writes `latest`
after every rank's files and the resume record are written, so a folder newer than `latest`
(or any folder when there is no `latest`) was cut short — by a kill or a full disk — and is
never a checkpoint (docs/reliability.md, "Recovery").
"""

from __future__ import annotations

import dataclasses
import errno
import json
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PREFIX = "step-"
LATEST = "latest"
"""The file naming the newest complete checkpoint (DeepSpeed's name; the recipe writes it)."""
RESUME_RECORD = "polyfuse_resume.json"
"""In each checkpoint folder: what the run was, read before any model loads on --resume."""

RESUMABLE_SETTINGS = frozenset(
    {"checkpoint_every", "log_every", "keep_checkpoints", "loader_workers", "export_every", "report_to"}
)
"""The ``distill`` fields a --resume may change: when the run logs, checkpoints and exports, how
many checkpoints it keeps, how many processes read the shards (the loader yields the same batches
whatever the number of workers) and where its metrics go. Every other field changes the maths or the data and is refused
(docs/reliability.md lists them); a new field is refused until it is added here."""


def checkpoint_tag(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def checkpoint_tags(directory: Path) -> list[str]:
    """Checkpoint folders under `directory`, oldest first (complete or not)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def latest_tag(directory: Path) -> str | None:
    """The checkpoint `latest` names, or None when there is none (written atomically: never torn)."""
    latest = directory / LATEST
    return latest.read_text(encoding="utf-8").strip() or None if latest.is_file() else None


def complete_checkpoint_tags(directory: Path) -> list[str]:
    """Checkpoint folders that are complete (module docstring), oldest first."""
    latest = latest_tag(directory)
    return [t for t in checkpoint_tags(directory) if latest is not None and t <= latest]


def incomplete_checkpoint_tags(directory: Path) -> list[str]:
    """Checkpoint folders cut short before `latest` named them, oldest first."""
    complete = set(complete_checkpoint_tags(directory))
    return [t for t in checkpoint_tags(directory) if t not in complete]


def resume_record(
    settings: Any,
    *,
    teachers: Sequence[str],
    input_keys: Mapping[str, str],
    seed: int,
    student: str,
    world_size: int,
) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint, name → JSON value: every field of the
    ``distill`` settings (a dataclass) but ``RESUMABLE_SETTINGS``, the teachers in order, the
    content keys of the caches it reads (``corpus_key``, ``teacher_key NAME``), the seed, the
    student folder and the number of ranks (each rank reads the shards ``[rank::world_size]``)."""
    record = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name not in RESUMABLE_SETTINGS
    }
    record.update(
        {"teachers": list(teachers), **input_keys, "seed": seed, "student": student, "world_size": world_size}
    )
    return json.loads(json.dumps(record))  # as it reads back from the file (tuples become lists)


def resume_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"name old → new"`` for every entry of ``saved`` that ``now`` differs from or lacks, sorted.
    Entries only ``now`` holds are not compared: a checkpoint of an older version did not record
    them (and a teacher added shows in ``teachers``)."""
    absent = "(none)"
    return [
        f"{name} {saved[name]!r} → {now[name]!r}" if name in now else f"{name} {saved[name]!r} → {absent}"
        for name in sorted(saved)
        if name not in now or now[name] != saved[name]
    ]


def write_resume_record(checkpoint: Path, record: Mapping[str, Any]) -> None:
    from data_schemas.atomic import write_json_atomic

    write_json_atomic(checkpoint / RESUME_RECORD, dict(record))


def read_resume_record(checkpoint: Path) -> dict[str, Any] | None:
    """The record of a checkpoint folder; None for one written before records existed.

    Raises:
        RuntimeError: a record that is not JSON (named, with the fix).
    """
    path = checkpoint / RESUME_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RuntimeError(
            f"{path} is not readable JSON ({e}): delete {checkpoint} to resume from the checkpoint before "
            "it, or start a new run (name=...)"
        ) from e


DISK_FULL_SIGNS = ("unexpected pos", "No space left", "file write failed")
"""What torch's zip writer says when a write came up short (it raises RuntimeError, not OSError)."""


def disk_full(error: BaseException) -> bool:
    """Whether a checkpoint write failed for want of space."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in DISK_FULL_SIGNS)


def seed_everything(seed: int) -> None:
    """Python, numpy and torch global generators (the same seed on every rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(random_gate_rng: torch.Generator) -> dict[str, Any]:
    """This rank's generator states, including the `random_gate` strategy's own generator (under
    the key "authors", its former name, which checkpoints keep)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "authors": random_gate_rng.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], random_gate_rng: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    random_gate_rng.set_state(state["authors"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_from_ranks(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every rank, in rank order (a collective: call on every rank)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def disk_full_message(checkpoint: Path) -> str:
    """One line naming the checkpoint that could not be written, the full disk and the fix."""
    root = checkpoint.parent.resolve()
    while not root.exists():  # the write may have failed before the folder was made
        root = root.parent
    free = shutil.disk_usage(root).free / 2**20
    while not root.is_mount() and root != root.parent:
        root = root.parent
    return (
        f"checkpoint {checkpoint} could not be written: the disk mounted at {root} is full "
        f"({free:.0f} MiB free now): free space there (e.g. other runs' checkpoints; "
        "distill.keep_checkpoints keeps fewer) or point runs_dir at another disk, then rerun with "
        "--resume (the cut-short checkpoint is ignored)"
    )
