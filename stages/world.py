"""Where this process sits in a job, read from the environment: one type for every stage.

Extraction strides its units by ``rank`` (``units[rank::world_size]``); distill trains on the
shards ``[rank::world_size]`` and lets only the main rank write what is shared. A launcher
(deepspeed, torchrun) sets RANK/LOCAL_RANK/WORLD_SIZE, SLURM sets SLURM_PROCID/SLURM_LOCALID/
SLURM_NTASKS; with neither, the process is the whole job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's rank among ``world_size`` (and on its node, ``local_rank``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one rank that prints progress and writes what every rank shares."""
        return self.rank == 0


def resolve_world(
    rank: int | None = None, world_size: int | None = None, env: Mapping[str, str] | None = None
) -> World:
    """Rank and world size from the flags, else RANK/WORLD_SIZE, else SLURM_PROCID/SLURM_NTASKS,
    else a single process; the local rank from LOCAL_RANK, else SLURM_LOCALID, else 0."""
    env = os.environ if env is None else env

    def pick(flag: int | None, *names: str, default: int) -> int:
        if flag is not None:
            return flag
        for name in names:
            if env.get(name, "").strip():
                try:
                    return int(env[name])
                except ValueError as e:
                    raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from e
        return default

    world = World(
        pick(rank, "RANK", "SLURM_PROCID", default=0),
        pick(world_size, "WORLD_SIZE", "SLURM_NTASKS", default=1),
        pick(None, "LOCAL_RANK", "SLURM_LOCALID", default=0),
    )
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size ≥ 1, got rank {world.rank} of {world.world_size}: "
            "fix --rank/--world-size (or RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS)"
        )
    return world
