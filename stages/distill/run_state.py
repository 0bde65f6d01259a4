"""What a checkpoint must hold beyond DeepSpeed's own state for a resume to be exact: every
random generator the loop draws from, per rank, and where the checkpoints lie.

DeepSpeed writes `client_state` into the model-states file of data-parallel rank 0 only, so
anything that differs between ranks (the RNG streams) is gathered into a per-rank list first.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PREFIX = "step-"


def checkpoint_tag(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def checkpoint_tags(directory: Path) -> list[str]:
    """Checkpoint folders under `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def seed_everything(seed: int) -> None:
    """Python, numpy and torch global generators (the same seed on every rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(authors_rng: torch.Generator) -> dict[str, Any]:
    """This rank's generator states, including the `authors` strategy's own generator."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "authors": authors_rng.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], authors_rng: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    authors_rng.set_state(state["authors"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_from_ranks(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every rank, in rank order (a collective: call on every rank)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out
