"""Test-suite wide: tests marked `gpu` need a CUDA GPU and are skipped where there is none."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `gpu`; bench/gpu_check.sh runs them)")
    for item in gpu:
        item.add_marker(skip)
