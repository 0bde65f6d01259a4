"""``polyfuse inspect`` / ``validate`` on a small fake-teacher cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.extraction import run_extraction
from pipeline.inspection import inspect_path, validate_path
from tests.pipeline.test_extraction import fake_teacher, write_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache root, teacher directory) of a finished two-teacher extraction."""
    folder = tmp_path_factory.mktemp("inspect")
    config = write_config(
        folder,
        folder / "cache",
        [fake_teacher("a", max_shards=3), fake_teacher("g", "gemma-3-270m", max_shards=2)],
    )
    report = run_extraction(load_config(config), progress=False)
    return folder / "cache", report.plans[0].directory


def corrupted_copy(cache: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    root, teacher_dir = cache
    copy = tmp_path / "cache"
    shutil.copytree(root, copy)
    return copy, copy / teacher_dir.relative_to(root)


def test_sound_cache_validates_and_inspects(cache: tuple[Path, Path]) -> None:
    root, teacher_dir = cache
    assert validate_path(root) == []
    tables = dict(inspect_path(root))
    teachers = tables["teachers"]
    assert sorted(teachers["teacher"].to_list()) == ["a", "g"] and teachers["complete"].all()
    assert (teachers["bytes_per_token"] > 0).all()
    assert set(tables["per teacher and domain"]["domain"].to_list()) == {"prose"}
    assert len(dict(inspect_path(teacher_dir))["shards"]) == 3
    shard = dict(inspect_path(teacher_dir / "shard-00000.parquet"))
    assert len(shard["samples"]) == 4
    preview = next(table for title, table in shard.items() if title.startswith("first rows"))
    assert (preview["top1_logprob"] >= preview["top2_logprob"]).all() and len(preview) == 8


def test_validate_finds_a_truncated_file_and_a_flipped_byte(cache: tuple[Path, Path], tmp_path: Path) -> None:
    root, teacher_dir = corrupted_copy(cache, tmp_path)
    truncated, flipped = teacher_dir / "shard-00000.parquet", teacher_dir / "shard-00002.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-200])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0x01
    flipped.write_bytes(bytes(data))
    faults = validate_path(root)
    by_path = {Path(f.path).name: f for f in faults}
    assert set(by_path) == {"shard-00000.parquet", "shard-00002.parquet"}
    assert "bytes on disk, manifest says" in by_path["shard-00000.parquet"].problem
    assert "sha256 differs" in by_path["shard-00002.parquet"].problem
    for fault in faults:
        assert (
            fault.repair.startswith(f"rm -rf {teacher_dir}/shard-0000")
            and "polyfuse extract --config configs/demo.yaml --teacher a" in fault.repair
        )


def test_validate_finds_missing_shards_and_changed_sample_ids(
    cache: tuple[Path, Path], tmp_path: Path
) -> None:
    root, teacher_dir = corrupted_copy(cache, tmp_path)
    (teacher_dir / "shard-00001.parquet").unlink()
    # The corpus shard changed under the teacher's cache (same name, other samples).
    corpus_train = next((root / "corpus").iterdir()) / "train"
    shutil.copy(corpus_train / "shard-00003.parquet", corpus_train / "shard-00002.parquet")
    faults = [f"{Path(f.path).name}: {f.problem}" for f in validate_path(root)]
    assert "shard-00001.parquet: listed in the manifest but missing" in faults
    assert any(f.startswith("shard-00002.parquet: ") and "manifest says" in f for f in faults)  # the corpus
    assert any(f.startswith("shard-00002.parquet: sample ids differ from the corpus shard") for f in faults)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no polyfuse cache"):
        validate_path(tmp_path / "empty")


def test_cli_validate_exits_non_zero_naming_each_fault(cache: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, teacher_dir = corrupted_copy(cache, tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(root)]).exit_code == 0
    assert runner.invoke(app, ["inspect", str(teacher_dir / "shard-00001.parquet")]).exit_code == 0
    (teacher_dir / "shard-00001.parquet").write_bytes(b"not parquet")
    result = runner.invoke(app, ["validate", str(root)])
    assert result.exit_code == 1
    assert (
        "FAULT" in result.output
        and "shard-00001.parquet" in result.output
        and "polyfuse extract" in result.output
    )


def test_a_corpus_shard_named_alone_is_checked_as_a_corpus_shard(
    cache: tuple[Path, Path], tmp_path: Path
) -> None:
    """Its manifest sits one folder up (above train/): the shard is sound, and a damaged one is
    repaired by preparing the corpus again, never by an extract that cannot recreate it."""
    root, _ = corrupted_copy(cache, tmp_path)
    corpus = next((root / "corpus").iterdir())
    shard = corpus / "train" / "shard-00000.parquet"
    assert validate_path(shard) == []
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    (fault,) = validate_path(shard)
    assert fault.path == str(shard) and "sha256 differs" in fault.problem
    assert fault.repair == f"rm -rf {corpus} && polyfuse prepare --config configs/demo.yaml"
    loose = tmp_path / "loose.parquet"  # a corpus shard copied out of its cache: its own kind
    shutil.copy(corpus / "train" / "shard-00001.parquet", loose)
    assert validate_path(loose) == []


def test_a_file_that_is_no_cache_shard_or_manifest_is_refused(
    cache: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, _ = corrupted_copy(cache, tmp_path)
    config = root / "some-config.yaml"
    config.write_text("name: x\n")
    with pytest.raises(ValueError, match="is neither a cache directory, a shard"):
        validate_path(config)
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 2 and "no faults" not in result.output
    manifest = next((root / "corpus").iterdir()) / "manifest.json"
    assert validate_path(manifest) == []  # a manifest names its cache


def test_cli_validate_takes_overrides_and_says_what_its_repairs_assume(
    cache: tuple[Path, Path], tmp_path: Path
) -> None:
    """A cache records neither the config nor the overrides it was built with: validate writes
    its repairs for the ones it is given (overrides included) and says so, and says when the
    cache is not the one that config describes."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, teacher_dir = corrupted_copy(cache, tmp_path)
    (teacher_dir / "shard-00001.parquet").write_bytes(b"not parquet")
    config = tmp_path / "c.yaml"
    config.write_text(f"cache_dir: {tmp_path / 'elsewhere'}\n")
    runner = CliRunner()
    guessed = runner.invoke(app, ["validate", str(root)])
    assert guessed.exit_code == 1
    assert "written for --config configs/demo.yaml (validate's default) with no overrides" in guessed.output
    given = runner.invoke(app, ["validate", str(root), "--config", str(config), f"cache_dir={root}"])
    assert given.exit_code == 1, given.output
    assert f"polyfuse extract --config {config} --teacher a cache_dir={root}" in given.output
    assert "is not under that config's cache_dir" not in given.output
    wrong = runner.invoke(app, ["validate", str(root), "--config", str(config)])
    assert f"is not under that config's cache_dir {tmp_path / 'elsewhere'}" in wrong.output
