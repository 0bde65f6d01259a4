"""The sparse target kinds end to end: a drawn-token cache is its own teacher key, distill trains on
each kind, and mismatched settings are user errors that write nothing."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError, config_from_dict
from tests.stages.distill.fake_world import FakeWorld

# `world`: the small distill world of tests/pipeline/conftest.py.


def _write(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path


def _sampled(config, runs: Path, cache: Path):
    return dataclasses.replace(
        config,
        runs_dir=str(runs),
        cache_dir=str(cache),
        extract=dataclasses.replace(config.extract, draws=12),
        distill=dataclasses.replace(config.distill, target="sampled", max_steps=2),
    )


def test_drawn_tokens_get_their_own_cache_and_train(world: FakeWorld, tmp_path: Path) -> None:
    from pipeline.extraction import run_extraction

    # A copy of the world's cache: the other tests expect one cache per teacher in the world's own.
    cache = tmp_path / "cache"
    shutil.copytree(world.config.cache_dir, cache)
    config = _sampled(world.config, tmp_path / "runs", cache)
    path = _write(config, tmp_path / "c.yaml")
    before = {p.parent.parent.name for p in cache.glob("teachers/*/*/manifest.json")}
    run_extraction(config, progress=False)
    after = {p.parent.parent.name for p in cache.glob("teachers/*/*/manifest.json")}
    assert len(after - before) == 2  # both teachers: new keys, the top-k caches untouched
    result = CliRunner().invoke(app, ["distill", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / config.name / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize("target", ["renormalised", "residual"])
def test_top_k_targets_train(world: FakeWorld, tmp_path: Path, target: str) -> None:
    config = world.config_for(tmp_path / "runs", max_steps=2, target=target)
    result = CliRunner().invoke(app, ["distill", "--config", str(_write(config, tmp_path / "c.yaml"))])
    assert result.exit_code == 0, result.output


def test_unknown_target_kind_names_the_choices(world: FakeWorld, tmp_path: Path) -> None:
    path = _write(world.config_for(tmp_path / "runs"), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(path), "distill.target=topp"])
    assert result.exit_code == 2
    assert "distill.target" in result.output and "residual" in result.output and "sampled" in result.output
    assert not (tmp_path / "runs").exists()


def test_sampled_asked_of_a_top_k_cache_names_the_extract_command(world: FakeWorld, tmp_path: Path) -> None:
    path = _write(world.config_for(tmp_path / "runs"), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["distill", "--config", str(path), "distill.target=sampled"])
    assert result.exit_code == 2
    assert "polyfuse extract" in result.output and "extract.draws=12" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    # Extraction needs only extract.draws; reading drawn tokens as a top-k is refused too.
    data = dataclasses.asdict(world.config)
    data["extract"]["draws"] = 12
    config = config_from_dict(data)
    with pytest.raises(ConfigError, match="distill.target"):
        config.check_distill_target()
