"""The one world type of every stage, from flags and the environment."""

from __future__ import annotations

import pytest

from stages.world import World, resolve_world


def test_rank_and_world_come_from_flags_then_environment() -> None:
    assert resolve_world(None, None, {}) == World(0, 1)
    assert resolve_world(None, None, {"RANK": "1", "WORLD_SIZE": "4"}) == World(1, 4)
    assert resolve_world(None, None, {"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}) == World(2, 3)
    assert resolve_world(0, 2, {"RANK": "1", "WORLD_SIZE": "4"}) == World(0, 2)
    with pytest.raises(ValueError, match="rank must be in"):
        resolve_world(2, 2, {})
    assert resolve_world(None, None, {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).local_rank == 1
    assert resolve_world(None, None, {"SLURM_LOCALID": "3", "SLURM_NTASKS": "8"}).local_rank == 3
    assert World().is_main and not World(1, 2).is_main
