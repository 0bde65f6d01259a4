"""Shared fixtures of the distill tests: one fake-backend world and one tiny student per session,
so extraction, vocab maps, DeepSpeed and transformers pay their start-up once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stages.distill.fake_world import GEMMA, SMOLLM2, FakeWorld, fake_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> FakeWorld:
    for folder in (SMOLLM2, GEMMA):
        if not (folder / "tokenizer.json").is_file():
            pytest.fail(f"{folder} is missing: run `make tokenizers`")
    return fake_world(tmp_path_factory.getbasetemp() / "distill-world")


@pytest.fixture(scope="session")
def tiny_student(world: FakeWorld) -> Path:
    return world.student


@pytest.fixture(scope="session")
def stream_inputs(world: FakeWorld):
    """The checked corpus shards, teacher caches and vocab maps of the world (no model loaded)."""
    from pipeline.distillation import resolve_stream_inputs

    return resolve_stream_inputs(world.config)
